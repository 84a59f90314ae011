"""imgtune: a folder of labelled images in, an accurate image classifier out."""

__version__ = "0.1.0"

from .classifier import ImageClassifier  # noqa: E402
from .errors import ConfigError, DataError, ImgtuneError, RunFolderError  # noqa: E402

__all__ = ["ImageClassifier", "ImgtuneError", "DataError", "ConfigError", "RunFolderError", "__version__"]
