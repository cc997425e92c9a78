"""The recipe: one YAML file that says what to train, on what, and what the bundle must pass
(schema.py), and how it is read and checked (load.py)."""

from .load import check_files, format_error, load_recipe, parse_recipe
from .schema import (
    AccuracyAware,
    BenchSection,
    Calibration,
    DataSection,
    DistillSection,
    ExportSection,
    Gate,
    GenerationCheck,
    MethodSection,
    ModelSection,
    QuantizeSection,
    Recipe,
    TensorRTSection,
    TrainingSection,
    ValidateSection,
)

__all__ = [
    "AccuracyAware",
    "BenchSection",
    "Calibration",
    "DataSection",
    "DistillSection",
    "ExportSection",
    "Gate",
    "GenerationCheck",
    "MethodSection",
    "ModelSection",
    "QuantizeSection",
    "Recipe",
    "TensorRTSection",
    "TrainingSection",
    "ValidateSection",
    "check_files",
    "format_error",
    "load_recipe",
    "parse_recipe",
]
