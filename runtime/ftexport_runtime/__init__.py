"""ftexport-runtime: load an ftexport bundle and predict, embed or generate, with onnxruntime, tokenizers and numpy only."""

from .bundle import Bundle, Manifest, Variant
from .errors import BackendUnavailable, BundleError, FtexportError, PredictError
from .heads.classify import Prediction
from .heads.entities import Entities, Entity
from .heads.generate import Generation, Generator, Stream, Token
from .predictor import Predictor

__version__ = "0.1.0"
__all__ = [
    "BackendUnavailable",
    "Bundle",
    "BundleError",
    "Entities",
    "Entity",
    "FtexportError",
    "Generation",
    "Generator",
    "Manifest",
    "PredictError",
    "Prediction",
    "Predictor",
    "Stream",
    "Token",
    "Variant",
]
