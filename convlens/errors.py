"""Errors that the command line reports as one line (no traceback unless --debug)."""


class ConvlensError(Exception):
    """Base class: a problem with the user's input, named in the message."""


class DatasetFormatError(ConvlensError, ValueError):
    """A data file is malformed: the message names the file and the problem."""


class ModelError(ConvlensError):
    """A model name, weights file or run folder cannot be used."""


class ConfigError(ConvlensError):
    """A setting is unknown or has a value of the wrong kind."""


class TrainingError(ConvlensError):
    """Training cannot go on (a non-finite loss, for example)."""
