"""convlens's version: in the package, every weights header and every folder cache."""

__version__ = "0.2.0"
