"""The one exception type that means "the user gave us something wrong": the CLI prints its message and exits 2."""


class UserError(Exception):
    """Bad input or configuration; the message names the file or option and what is wrong."""
