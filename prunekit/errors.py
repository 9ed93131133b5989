"""One exception type for bad input: the CLI prints its message (problem and fix) without a traceback."""


class PrunekitError(Exception):
    """A user-facing error. The message names the problem and how to fix it."""
