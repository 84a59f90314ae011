"""Errors a user can act on. The CLI turns each into one line on stderr and exit code 2."""

from __future__ import annotations

import importlib


class ImgtuneError(Exception):
    """Bad input or bad usage: say what was expected, what was found, and the fix."""


class DataError(ImgtuneError):
    """The images or labels cannot be used as given."""


class ConfigError(ImgtuneError):
    """A setting or flag value is out of range or unknown."""


class ParameterError(ConfigError):
    """One parameter's value is wrong, said in the caller's words: str(e) names the Python parameter
    (`image_size must be ...`); the CLI asks `worded_for("--image-size")`. `message` may place the name
    with "{name}"; otherwise it follows the name."""

    def __init__(self, param: str, message: str):
        self.param = param
        self.message = message if "{name}" in message else "{name} " + message
        super().__init__(self.worded_for(param))

    def worded_for(self, name: str) -> str:
        return self.message.replace("{name}", name)


class RunFolderError(ImgtuneError):
    """A run folder is missing, incomplete or does not match its config."""


class NotFittedError(RunFolderError, AttributeError):
    """A classifier was used before fit or load: it has no trained model (and no run folder) yet. An
    AttributeError too, as scikit-learn's is, so `hasattr(clf, "classes_")` is False before fit."""


class MissingDependency(ImgtuneError):
    """An optional package a feature needs is not installed; names the extra that installs it."""

    def __init__(self, packages: str, extra: str, feature: str):
        self.packages, self.extra = packages, extra
        super().__init__(f"{feature} needs {packages}: pip install 'imgtune[{extra}]'.")


def require(modules: tuple[str, ...], *, packages: str, extra: str, feature: str) -> list:
    """The optional modules a feature needs, imported, or one MissingDependency naming the extra."""
    try:
        return [importlib.import_module(m) for m in modules]
    except ImportError:
        raise MissingDependency(packages, extra, feature) from None
