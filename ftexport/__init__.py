"""ftexport: fine-tune, compress and export compact transformers to validated ONNX bundles."""

__version__ = "0.1.0"
