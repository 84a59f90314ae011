"""imgtune: a folder of labelled images in, an accurate image classifier out."""

__version__ = "0.1.0"

from .classifier import ImageClassifier  # noqa: E402
from .errors import (  # noqa: E402
    ConfigError,
    DataError,
    ImgtuneError,
    MissingDependency,
    NotFittedError,
    ParameterError,
    RunFolderError,
)
from .runs.trained import TrainedModel  # noqa: E402
from .train.budget import TimeLimit  # noqa: E402

__all__ = ["ImageClassifier", "TrainedModel", "TimeLimit", "ImgtuneError", "DataError", "ConfigError",
           "ParameterError", "RunFolderError", "NotFittedError", "MissingDependency", "__version__"]
