"""Errors a user can act on. The CLI turns each into one line on stderr and exit code 2."""


class ImgtuneError(Exception):
    """Bad input or bad usage: say what was expected, what was found, and the fix."""


class DataError(ImgtuneError):
    """The images or labels cannot be used as given."""


class ConfigError(ImgtuneError):
    """A setting or flag value is out of range or unknown."""


class RunFolderError(ImgtuneError):
    """A run folder is missing, incomplete or does not match its config."""
