"""Exceptions that mean "the user gave us something wrong": the CLI prints the message on one line and exits 2.

Library code raises the specific kind; `main.py` catches `UserError`, the base of all of them.
Each message names the file or option and what is wrong.
"""


class UserError(Exception):
    """Bad input or configuration; the message names the file or option and what is wrong."""


class ConfigError(UserError, ValueError):
    """A setting (a flag, a TrainConfig field, a post-processing or tracking parameter) is out of range."""


class CheckpointError(UserError):
    """A checkpoint (or its post-processing record) is missing, unreadable or not one of this project's."""


class OutputError(UserError):
    """An output would replace or mix with something this project did not write (inputs, a user's files)."""
