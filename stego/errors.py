"""Exceptions with one-line messages that name the file at fault and the fix."""


class StegoError(ValueError):
    """A user-facing error: bad input, a mismatched file, a wrong setting."""


class MissingFileError(StegoError, FileNotFoundError):
    """A file the run needs is not where it should be; the message says where to get it and put it."""
