"""imgtune: a folder of labelled images in, an accurate image classifier out."""

from ._version import __version__
from .classifier import ImageClassifier
from .errors import (
    ConfigError,
    DataError,
    ImgtuneError,
    MissingDependency,
    NotFittedError,
    ParameterError,
    RunFolderError,
)
from .runs.trained import TrainedModel
from .train.budget import TimeLimit

__all__ = ["ImageClassifier", "TrainedModel", "TimeLimit", "ImgtuneError", "DataError", "ConfigError",
           "ParameterError", "RunFolderError", "NotFittedError", "MissingDependency", "__version__"]
