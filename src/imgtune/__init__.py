"""imgtune: a folder of labelled images in, an accurate image classifier out.

The classes that need PyTorch are imported on first use (PEP 562), so that `imgtune --help` and the
command line's first lines (where Ctrl-C and SIGTERM are mapped) run before torch loads."""

from ._version import __version__
from .errors import (
    ConfigError,
    DataError,
    ImgtuneError,
    MissingDependency,
    NotFittedError,
    ParameterError,
    RunFolderError,
)

_LAZY = {"ImageClassifier": ".classifier", "TrainedModel": ".runs.trained", "TimeLimit": ".train.budget"}

__all__ = ["ImageClassifier", "TrainedModel", "TimeLimit", "ImgtuneError", "DataError", "ConfigError",
           "ParameterError", "RunFolderError", "NotFittedError", "MissingDependency", "__version__"]


def __getattr__(name: str):
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'imgtune' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
