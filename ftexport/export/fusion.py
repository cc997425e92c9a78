"""Graph optimization levels O1-O4 (Optimum's names): O1 basic (constant folding, redundant
nodes), O2 + the transformer fusions (attention, SkipLayerNorm, BiasGelu), O3 + fast GELU,
O4 = O3 + fp16 for the GPU (inputs stay int64 and outputs float32).

Both paths end in ONNX Runtime's transformer optimizer (`onnxruntime.transformers.optimizer`):
through Optimum's ORTOptimizer where Optimum can run (the design card's path), else called
directly with the options Optimum would pass, so a bundle gets the same fusions on either
stack. The variant records which path made it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ..core.errors import BundleError, first_line
from .graph import CONFIG_FILE, quiet_exporters

# ONNX Runtime's optimizer knows a few architecture families; Optimum maps model types onto them.
ORT_MODEL_TYPES = {
    "albert": "bert",
    "bert": "bert",
    "camembert": "bert",
    "deberta": "bert",
    "deberta-v2": "bert",
    "distilbert": "bert",
    "electra": "bert",
    "modernbert": "bert",
    "mpnet": "bert",
    "roberta": "bert",
    "xlm-roberta": "bert",
    "gpt2": "gpt2",
    "gpt_neo": "gpt2",
    "gpt_neox": "gpt2",
    "gptj": "gpt2",
    "llama": "gpt2",
    "mistral": "gpt2",
}
LEVELS = ("O1", "O2", "O3", "O4")


def optimize_graph(bundle_dir: Path, model_file: str, save_dir: Path, level: str) -> tuple[Path, dict[str, Any]]:
    """Optimize `model_file` of the bundle at `level` into save_dir; returns (file, details)."""
    from . import EXPORTERS

    if not (bundle_dir / CONFIG_FILE).is_file():
        raise BundleError(f"{bundle_dir}: graph optimization needs the model's config.json in the bundle; re-export it with this ftexport")
    if level not in LEVELS:
        raise BundleError(f"optimization level {level!r}: choose one of {', '.join(LEVELS)}")
    save_dir.mkdir(parents=True, exist_ok=True)
    if EXPORTERS["optimum"].available() is None:
        produced = _with_optimum(bundle_dir, model_file, save_dir, level)
        how = "optimum"
    else:
        produced = _with_onnxruntime(bundle_dir, model_file, save_dir, level)
        how = "onnxruntime"
    return produced, {
        "optimization_level": level,
        "optimized_for": "gpu" if level == "O4" else "cpu",
        "fp16": level == "O4",
        "optimizer": how,
    }


def _with_optimum(bundle_dir: Path, model_file: str, save_dir: Path, level: str) -> Path:
    from optimum.onnxruntime import ORTOptimizer
    from optimum.onnxruntime.configuration import AutoOptimizationConfig

    cfg = AutoOptimizationConfig.with_optimization_level(level, for_gpu=level == "O4")
    with quiet_exporters():
        optimizer = ORTOptimizer.from_pretrained(bundle_dir, file_names=[model_file])
        optimizer.optimize(save_dir=save_dir, optimization_config=cfg)
    produced = sorted(save_dir.glob("*.onnx"))
    if not produced:
        raise BundleError(f"{bundle_dir}: Optimum's optimizer produced no model at level {level}")
    return produced[0]


def _with_onnxruntime(bundle_dir: Path, model_file: str, save_dir: Path, level: str) -> Path:
    """What Optimum's AutoOptimizationConfig asks of ONNX Runtime's optimizer, level by level:
    opt_level 1 without transformer fusions for O1; opt_level 2 with them for O2-O4 (embedding
    LayerNorm fusion off, as Optimum has it); GELU approximation from O3; fp16 at O4."""
    from onnxruntime.transformers.fusion_options import FusionOptions
    from onnxruntime.transformers.optimizer import optimize_model

    config = json.loads((bundle_dir / CONFIG_FILE).read_text())
    model_type = ORT_MODEL_TYPES.get(config.get("model_type", ""))
    if model_type is None:
        raise BundleError(
            f"{bundle_dir}: ONNX Runtime's transformer optimizer has no fusions for model type {config.get('model_type')!r}; "
            f"skip quantize.optimize for this model (known: {', '.join(sorted(ORT_MODEL_TYPES))})"
        )
    heads = int(config.get("num_attention_heads") or config.get("n_head") or 0)
    hidden = int(config.get("hidden_size") or config.get("n_embd") or 0)
    options = FusionOptions(model_type)
    options.enable_embed_layer_norm = False
    options.enable_gelu_approximation = level in ("O3", "O4")
    out = save_dir / f"{Path(model_file).stem}_optimized.onnx"
    try:
        with quiet_exporters():
            optimizer = optimize_model(
                str(bundle_dir / model_file),
                model_type,
                heads,
                hidden,
                opt_level=1 if level == "O1" else 2,
                optimization_options=options,
                use_gpu=level == "O4",
                only_onnxruntime=level == "O1",
            )
            if level == "O4":
                optimizer.convert_float_to_float16(use_symbolic_shape_infer=True, keep_io_types=True)
            optimizer.save_model_to_file(str(out))
    except Exception as e:  # the optimizer raises bare Exceptions from shape inference and fusions
        raise BundleError(f"{bundle_dir / model_file}: ONNX Runtime's optimizer failed at level {level} ({first_line(e)})") from None
    return out
