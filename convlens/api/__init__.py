"""The commands' logic, above every layer it puts together: the CLI parses and calls these, and
the package's public API (convlens.train, convlens.evaluate, ...) is them.

    train.py      train: the training loop, then calibration, test evaluation and the report
    evaluate.py   evaluate_run: a run's metrics on a split (and, to write, its files)
"""
