"""int8 with ONNX Runtime's quantizer (`onnxruntime.quantization`), called directly rather than
through Optimum's ORTQuantizer: only the former takes `DefaultTensorType`, without which
quantizing a fused graph fails in shape inference ("Unable to find data type for weight_name
..."), and a calibration reader that needs no `datasets` object. Also the CPU rewrite the
dynamic int8 file is stored as, and symbolic shape inference over a fused graph."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ...core import progress
from ...core.errors import BundleError, DataError, RecipeError, first_line

# Operators worth quantizing in an encoder: the MatMuls (where the time goes), the embedding
# Gather (where the bytes are) and, in a fused graph, Attention (QKV projections inside).
DYNAMIC_OPS = ["MatMul", "Gather", "Attention"]
STATIC_OPS = ["MatMul", "Gather"]


def fold_weight_transposes(model: Any) -> int:
    """Give every MatMul whose weight is Transpose(initializer) (a tied language-model head:
    the dynamo exporter writes lm_head as MatMul(h, Transpose(embed_tokens.weight))) a
    transposed copy of that initializer as its weight, so quantizers, which take constant
    weights only, quantize it; the embedding Gather keeps the original. Returns how many."""
    from onnx import numpy_helper

    graph = model.graph
    inits = {i.name: i for i in graph.initializer}
    producer = {o: n for n in graph.node for o in n.output}
    folded: dict[str, str] = {}
    for node in graph.node:
        if node.op_type != "MatMul" or node.input[1] in inits:
            continue
        t = producer.get(node.input[1])
        perm = [list(a.ints) for a in t.attribute if a.name == "perm"] if t is not None and t.op_type == "Transpose" else []
        if not t or t.input[0] not in inits or perm not in ([], [[1, 0]]) or len(inits[t.input[0]].dims) != 2:
            continue
        if t.output[0] not in folded:
            name = f"{t.input[0]}.transposed"
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(numpy_helper.to_array(inits[t.input[0]]).T), name))
            folded[t.output[0]] = name
        node.input[1] = folded[t.output[0]]
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    for node in [n for n in graph.node if n.op_type == "Transpose" and n.output[0] in folded and n.output[0] not in used]:
        graph.node.remove(node)
    return len(folded)


def with_constant_weights(src: Path, work: Path) -> Path:
    """`src`, or a copy in `work` where tied weights are folded (fold_weight_transposes)."""
    import onnx

    model = onnx.load(str(src))
    if not fold_weight_transposes(model):
        return src
    dst = work / f"_folded_{src.name}"
    onnx.save(model, str(dst), save_as_external_data=model.ByteSize() > 2**31 - 2**20, location=f"{dst.name}.data")
    return dst


class Reader:
    """onnxruntime CalibrationDataReader over tokenized texts, one text per call (no padding,
    so pad positions never widen the activation ranges)."""

    def __init__(self, predictor: Any, texts: Sequence[str]):
        self._feeds = [predictor.encode([t]) for t in texts]
        self._i = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self._i >= len(self._feeds):
            return None
        self._i += 1
        return self._feeds[self._i - 1]

    def rewind(self) -> None:
        self._i = 0


def int8_onnx(
    src: Path,
    dst: Path,
    static: bool,
    section: Any,
    reader: Reader | None = None,
    nodes_to_quantize: list[str] | None = None,
    nodes_to_exclude: list[str] | None = None,
) -> dict[str, Any]:
    """Quantize `src` to `dst` with ONNX Runtime; returns the settings for the manifest."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_dynamic, quantize_static

    # Contrib ops of a fused graph (Attention, SkipLayerNormalization, ...) have no ONNX
    # type inference; without a default type the quantizer cannot find their weights' types.
    extra: dict[str, Any] = {"DefaultTensorType": onnx.TensorProto.FLOAT}
    common = dict(
        per_channel=section.per_channel,
        reduce_range=section.reduce_range,
        weight_type=QuantType.QInt8,
        nodes_to_quantize=nodes_to_quantize or [],
        nodes_to_exclude=nodes_to_exclude or [],
        extra_options=extra,
    )
    root = logging.getLogger()  # the quantizer warns through the root logger, one line per tensor
    level = root.level
    root.setLevel(logging.ERROR)
    try:
        if static:
            if reader is None:
                raise RecipeError(
                    "static int8 needs calibration texts; give a recipe with a data.train split (ftexport quantize --recipe R)"
                )
            reader.rewind()
            cal = section.calibration
            # symmetric: int8 activations with zero point 0, the only int8 TensorRT's explicit quantization reads
            extra.update({"ActivationSymmetric": section.symmetric, "WeightSymmetric": True, "CalibPercentile": cal.percentile})
            method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy, "percentile": CalibrationMethod.Percentile}[
                cal.method
            ]
            fmt = QuantFormat.QDQ if section.format == "qdq" else QuantFormat.QOperator
            quantize_static(
                str(src),
                str(dst),
                reader,
                quant_format=fmt,
                op_types_to_quantize=STATIC_OPS,
                activation_type=QuantType.QInt8 if section.symmetric else QuantType.QUInt8,
                calibrate_method=method,
                **common,
            )
            detail = {
                "mode": "static",
                "format": section.format,
                "calibration": cal.model_dump(),
                "operators": STATIC_OPS,
                "activations": "int8 symmetric (calibrated)" if section.symmetric else "uint8 (calibrated)",
            }
        else:
            quantize_dynamic(str(src), str(dst), op_types_to_quantize=DYNAMIC_OPS, **common)
            detail = {"mode": "dynamic", "format": "qoperator", "operators": DYNAMIC_OPS, "activations": "uint8 (scaled at run time)"}
    except (RecipeError, DataError):
        raise
    except Exception as e:  # onnxruntime's quantizer raises bare Exceptions and ValueErrors
        raise BundleError(f"{src}: ONNX Runtime could not quantize this model ({first_line(e)})") from None
    finally:
        root.setLevel(level)
    for tmp in dst.parent.glob("augmented_model*.onnx"):
        tmp.unlink()
    return {**detail, "weights": "int8", "per_channel": section.per_channel, "reduce_range": section.reduce_range}


def cpu_preoptimize(path: Path) -> dict[str, Any]:
    """Replace a CPU-only model (dynamic int8: its quantized operators run on the CPU only)
    with ONNX Runtime's own EXTENDED-level rewrite of it for the CPU execution provider.

    Every session runs these fusions at load anyway; done once here, the runtime's session
    set-up finds nothing left to fuse and starts faster (0.044 s instead of 0.081 s for the
    quickstart int8 model on a Zen 5 core), with bit-identical outputs: the same rewrite,
    made earlier. EXTENDED, not ALL: the levels above it may bake in layouts for this
    machine's CPU (ORT warns so), which a bundle must not carry to another machine."""
    import onnxruntime as ort

    work = path.with_name(f"_{path.stem}.ortopt.onnx")
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    opts.optimized_model_filepath = str(work)
    try:
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # ORT raises its own Fail/InvalidGraph types
        work.unlink(missing_ok=True)
        raise BundleError(f"{path.name}: ONNX Runtime could not optimize the quantized model ({first_line(e)})") from None
    work.replace(path)
    return {"level": "extended", "execution_provider": "CPUExecutionProvider", "onnxruntime": ort.__version__}


def typed(src: Path, dst: Path) -> Path:
    """Symbolic shape inference over a fused graph, so the quantizer knows the type and shape of
    every tensor between contrib ops (ONNX's own inference stops at the first Attention node)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    try:
        quant_pre_process(str(src), str(dst), skip_optimization=True, auto_merge=True)
    except Exception as e:  # the symbolic inferencer raises bare Exceptions
        progress.info(f"shape inference on the fused graph failed ({str(e)[:120]}); quantizing with default types")
        return src
    return dst
