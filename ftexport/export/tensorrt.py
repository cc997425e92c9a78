"""`ftexport export --trt`: TensorRT engines from a bundle's ONNX models.

Two ways to tell TensorRT the precision, by release:
- TensorRT 10.0-10.11 (`flags`): the plain fp32 graph with the FP16 builder flag for an fp16
  engine; the int8 QDQ graph with INT8 and FP16.
- TensorRT 10.12 and later, 11.x (`strongly-typed`): TensorRT 11 removed the precision flags
  (BuilderFlag has no FP16/BF16/INT8/FP8/INT4/FP4; 10.12 deprecated them), so the precision is
  the graph's own: the fp16 engine is built from a plain fp16 cast of the fp32 export (keep_io_types,
  normalization kept in fp32; no ONNX Runtime contrib ops, which TensorRT's parser does not read,
  hence not the O4 graph), the int8 engine from the symmetric Q/DQ graph with no flag at all.
The manifest's engine entry records which way built it (`details.build`), from which graph
(`details.graph`) and the TensorRT version.

What each engine is built from:
- fp16 (and fp32): the plain fp32 ONNX export. The Optimum-fused graphs (opt, O4 fp16) hold
  ONNX Runtime contrib ops TensorRT's parser does not read.
- int8: the quantize stage's static QDQ model, calibrated on training texts, with symmetric
  int8 activations (`quantize.symmetric`): TensorRT's explicit quantization takes the scales
  from the Q/DQ nodes, so nothing is recalibrated here and no random-scale calibration exists.

Each engine gets one optimization profile. Batch: recipe `tensorrt.batch` (default 1/1/64).
Sequence: recipe `tensorrt.seq`, or by default from the token lengths of the training texts
(min 1, opt the median, max the longest rounded up to a multiple of 32, within max_length).
A text longer than the profile's max is refused by the runtime, or cut to it with
`tensorrt.on_longer: truncate`. The engine is stored with a fingerprint of where it was
built (TensorRT version, GPU, compute capability, driver); the runtime refuses it elsewhere.
A timing cache beside the bundle (BUNDLE.timing.cache) makes rebuilds on the same GPU fast; a
cache from another GPU or TensorRT, or a corrupt one, is reported in one line and replaced.

The planning (profile from data, which variant feeds which engine, whether a QDQ graph is
one TensorRT can read) is plain Python tested in CI; `build_engine` is the TensorRT calls.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
from ftexport_runtime.bundle import Bundle, Manifest, write_manifest
from ftexport_runtime.engines.tensorrt import MUST_MATCH, EngineSpec, Profile, current_fingerprint, import_tensorrt
from ftexport_runtime.tokenizer import load_tokenizer

from ..core import progress
from ..core.artifacts import StageRecord, key_of, link_tree, make_key, stage_dir, unlinked
from ..core.errors import BackendUnavailable, BundleError, FtexportError, RecipeError, first_line
from ..data import load_data
from ..tasks import TASKS, get_task

PRECISIONS = ("fp16", "int8", "fp32")
FLAGS, STRONGLY_TYPED = "flags", "strongly-typed"  # how the engine's precision is given (see the module docstring)
STRONG_TYPING_FROM = (10, 12)  # the release that deprecated the precision flags; 11.0 removed them
# Kept in fp32 by the fp16 cast: what a LayerNorm is made of (statistics overflow in fp16)
FP16_KEEP_FP32 = ["LayerNormalization", "ReduceMean", "Pow", "Sqrt"]
INSTALL = "pip install 'ftexport[trt]' --extra-index-url https://pypi.nvidia.com"
ENGINE_DIR = "engines"
# int8 ops TensorRT cannot take: dynamic quantization and ORT's QOperator format
_NOT_QDQ = {
    "DynamicQuantizeLinear",
    "MatMulInteger",
    "ConvInteger",
    "QLinearMatMul",
    "QLinearConv",
    "QLinearAdd",
    "QAttention",
    "DynamicQuantizeMatMul",
    "MatMulIntegerToFloat",
    "QGemm",
}


def round_up(n: float, multiple: int) -> int:
    return int(math.ceil(n / multiple) * multiple)


def profile_from_lengths(
    lengths: list[int] | np.ndarray, max_length: int, batch: tuple[int, int, int] = (1, 1, 64), seq: tuple[int, int, int] | None = None
) -> Profile:
    """The optimization profile: `seq` as given, or from the token lengths of real texts."""
    if seq is None:
        lengths = np.asarray(lengths)
        if lengths.size == 0:
            seq = (1, max_length, max_length)
        else:
            hi = min(max_length, round_up(int(lengths.max()), 32))
            seq = (1, min(hi, max(1, round_up(float(np.median(lengths)), 8))), hi)
    if seq[2] > max_length:
        raise RecipeError(f"tensorrt.seq: max {seq[2]} is over the bundle's max_length {max_length}; texts never get longer than that")
    try:
        return Profile(tuple(batch), tuple(seq))  # type: ignore[arg-type]
    except ValueError as e:
        raise RecipeError(f"tensorrt.{e}") from None


def token_lengths(bundle: Bundle, texts: list[str]) -> list[int]:
    """Tokens per text, as the runtime tokenizes them (padding excluded)."""
    tok = load_tokenizer(bundle, bundle.manifest.max_length)
    return [sum(e.attention_mask) for e in tok.encode_batch(texts)]


def int8_problems(onnx_path: Path) -> list[str]:
    """Why TensorRT's explicit quantization cannot take this int8 graph ([] when it can)."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(str(onnx_path), load_external_data=False)
    ops = Counter(n.op_type for n in model.graph.node)
    problems = []
    not_qdq = sorted(set(ops) & _NOT_QDQ)
    if not_qdq:
        problems.append(
            f"it is dynamic or QOperator int8 ({', '.join(not_qdq)}); TensorRT reads QuantizeLinear/DequantizeLinear (QDQ) graphs only"
        )
    contrib = sorted({n.op_type for n in model.graph.node if n.domain == "com.microsoft"} - _NOT_QDQ)
    if contrib:
        problems.append(
            f"it holds ONNX Runtime contrib ops ({', '.join(contrib)}) from graph optimization, which TensorRT's parser does not read"
        )
    if not not_qdq and not ops.get("QuantizeLinear"):
        problems.append("it has no QuantizeLinear nodes")
    inits = {i.name: i for i in model.graph.initializer}
    asym = 0
    for n in model.graph.node:
        if n.op_type in ("QuantizeLinear", "DequantizeLinear") and len(n.input) > 2 and n.input[2] in inits:
            zp = inits[n.input[2]]
            if zp.data_type != onnx.TensorProto.INT8 or np.any(numpy_helper.to_array(zp) != 0):
                asym += 1
    if asym:
        problems.append(f"{asym} Q/DQ nodes have uint8 or non-zero zero points; TensorRT needs symmetric int8 (quantize.symmetric: true)")
    return problems


@dataclass
class EnginePlan:
    name: str  # fp16, int8, fp32
    source: str  # the ONNX variant
    onnx: Path
    flags: tuple[str, ...]  # TensorRT BuilderFlag names (the flags way only)
    profile: Profile
    inputs: list[str]
    workspace_bytes: int
    build: str = FLAGS  # FLAGS or STRONGLY_TYPED
    cast_fp16: bool = False  # strongly typed fp16: build from an fp16 cast of `onnx`, made by build_engines

    @property
    def graph(self) -> str:
        """The graph TensorRT parses, in words (the manifest records it)."""
        return f"fp16 cast of {self.source} (keep_io_types; {', '.join(FP16_KEEP_FP32)} in fp32)" if self.cast_fp16 else self.source


def version_tuple(text: str) -> tuple[int, int]:
    parts = [int("".join(c for c in p if c.isdigit()) or 0) for p in str(text).split(".")[:2]]
    return (parts + [0, 0])[0], (parts + [0, 0])[1]


def build_mode(trt: Any) -> str:
    """STRONGLY_TYPED from TensorRT 10.12 on (and wherever BuilderFlag has no FP16), else FLAGS."""
    if version_tuple(trt.__version__) >= STRONG_TYPING_FROM or not hasattr(trt.BuilderFlag, "FP16"):
        return STRONGLY_TYPED
    return FLAGS


def plan_engines(
    bundle: Bundle, precisions: list[str], profile: Profile, workspace_gib: float = 4.0, build: str = FLAGS
) -> list[EnginePlan]:
    """Which ONNX variant feeds each engine, with which builder flags (`build` FLAGS: TensorRT
    10.0-10.11) or which graph precision (STRONGLY_TYPED: no flags; fp16 from an fp16 cast);
    refuses what TensorRT cannot build."""
    if build not in (FLAGS, STRONGLY_TYPED):
        raise ValueError(f"build must be {FLAGS!r} or {STRONGLY_TYPED!r}, got {build!r}")
    m = bundle.manifest
    task = get_task(m.task)
    if not task.tensorrt:
        able = ", ".join(t.name for t in TASKS.values() if t.tensorrt)
        raise RecipeError(
            f"export --trt: TensorRT engines are built for encoder bundles ({able}); "
            f"a {task.name} bundle runs on ONNX Runtime (--backend cpu or cuda)"
        )
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown or not precisions:
        raise RecipeError(f"export --trt: precision must be among {', '.join(PRECISIONS)}, got {', '.join(unknown) or 'none'}")
    plans = []
    workspace = int(workspace_gib * 2**30)
    strong = build == STRONGLY_TYPED
    for precision in dict.fromkeys(precisions):
        if precision in ("fp16", "fp32"):
            source, flags = "fp32", (("FP16",) if precision == "fp16" and not strong else ())
        else:
            candidates = [v for v in m.variants.values() if v.precision == "int8"]
            why = {v.name: int8_problems(bundle.path_of(v.file)) for v in candidates}
            usable = [name for name, p in why.items() if not p]
            if not usable:
                seen = "; ".join(f"{name}: {p[0]}" for name, p in why.items()) or "the bundle has no int8 variant"
                raise RecipeError(
                    f"export --trt: no int8 variant TensorRT can build from ({seen}); make one with "
                    "`ftexport quantize B -o B2 --recipe R --mode static --symmetric` (static QDQ, symmetric int8, calibrated on training "
                    "texts)"
                )
            # flags: FP16 too, so layers left unquantized run in fp16; strongly typed: the Q/DQ nodes say it all
            source, flags = usable[0], (() if strong else ("INT8", "FP16"))
        plans.append(
            EnginePlan(
                precision,
                source,
                bundle.path_of(m.variants[source].file),
                flags,
                profile,
                list(m.inputs),
                workspace,
                build,
                cast_fp16=strong and precision == "fp16",
            )
        )
    return plans


def fp16_cast(src: Path, dst: Path) -> Path:
    """A plain fp16 copy of an fp32 ONNX graph that TensorRT's parser reads: every float
    tensor and initializer in fp16 except inputs and outputs (keep_io_types) and the ops of a
    LayerNorm (FP16_KEEP_FP32), with no ONNX Runtime contrib ops (onnxruntime.transformers'
    float16 converter, which adds only standard Cast nodes)."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    model = onnx.load(str(src))
    external = any(t.data_location == onnx.TensorProto.EXTERNAL for t in model.graph.initializer) or src.stat().st_size > 2**30
    try:
        cast = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(DEFAULT_OP_BLOCK_LIST) + FP16_KEEP_FP32)
    except Exception as e:  # the converter raises bare Exceptions and ValueErrors
        raise BundleError(f"{src.name}: could not cast the model to fp16 for TensorRT ({first_line(e)})") from None
    contrib = sorted({n.op_type for n in cast.graph.node if n.domain not in ("", "ai.onnx")})
    if contrib:
        raise BundleError(f"{src.name}: the fp16 cast holds non-standard ops ({', '.join(contrib)}) TensorRT's parser does not read")
    if external:
        onnx.save(cast, str(dst), save_as_external_data=True, location=f"{dst.name}.data")
    else:
        onnx.save(cast, str(dst))
    return dst


def _attach_timing_cache(trt: Any, config: Any, data: bytes | None, where: str) -> None:
    """Attach the serialized cache `data` to the builder config, or, when TensorRT cannot use
    it (made on another GPU or TensorRT version: set_timing_cache returns False; corrupt:
    create_timing_cache gives None or raises), say so in one line and attach a fresh one."""
    why = None
    if data:
        try:
            cache = config.create_timing_cache(data)
        except Exception as e:  # noqa: BLE001 - a corrupt cache may raise instead of returning None
            cache, why = None, f"unreadable ({first_line(e, 120)})"
        if cache is None:
            why = why or "unreadable (corrupt, or written by another TensorRT)"
        elif config.set_timing_cache(cache, ignore_mismatch=False):
            return
        else:
            why = "made on another GPU or TensorRT version"
        progress.info(f"{where}: {why}; starting a fresh timing cache (this build times every kernel)")
    fresh = config.create_timing_cache(b"")
    if fresh is None or not config.set_timing_cache(fresh, ignore_mismatch=False):
        progress.info(f"{where}: TensorRT would not take a fresh timing cache; building without one")


def build_engine(trt: Any, plan: EnginePlan, timing_cache: bytes | None, cache_name: str = "timing cache") -> tuple[bytes, bytes | None]:
    """TensorRT 10/11's Python API: parse the ONNX file, one optimization profile for every
    input, the precision (builder flags, or a strongly typed network), the timing cache;
    returns (engine, updated cache, or None when no cache was attached)."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    if plan.build == STRONGLY_TYPED:  # ignored by 11.x (always strongly typed), needed by 10.12+
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
    else:
        network = builder.create_network(0)  # TensorRT 10: explicit batch is the only mode
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(plan.onnx)):
        errors = [str(parser.get_error(i).desc()) for i in range(parser.num_errors)]
        raise BundleError(f"{plan.onnx.name}: TensorRT's ONNX parser refused it ({'; '.join(errors)[:300] or 'no detail'})")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, plan.workspace_bytes)
    for flag in plan.flags:
        member = getattr(trt.BuilderFlag, flag, None)
        if member is None:
            raise BundleError(
                f"TensorRT {trt.__version__} has no builder flag {flag} (TensorRT 11 removed the precision flags): "
                "plan the engines with build='strongly-typed' (build_mode(trt))"
            )
        config.set_flag(member)
    _attach_timing_cache(trt, config, timing_cache, cache_name)
    profile = builder.create_optimization_profile()
    shapes = plan.profile.shapes()
    for i in range(network.num_inputs):
        name = network.get_input(i).name
        if name not in plan.inputs:
            raise BundleError(f"{plan.onnx.name}: input {name!r} is not one of the bundle's inputs ({', '.join(plan.inputs)})")
        profile.set_shape(name, *shapes)
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise BundleError(
            f"{plan.onnx.name}: TensorRT could not build a {plan.name} engine (see its log above); "
            "try a larger --workspace-gib or a smaller profile"
        )
    cache = config.get_timing_cache()  # None when no cache could be attached
    return bytes(serialized), (bytes(cache.serialize()) if cache is not None else None)


def settings_of(
    precisions: list[str], batch: tuple[int, ...], seq: tuple[int, ...] | None, on_longer: str, workspace_gib: float
) -> dict[str, Any]:
    return {
        "precisions": list(dict.fromkeys(precisions)),
        "batch": list(batch),
        "seq": list(seq) if seq else None,
        "on_longer": on_longer,
        "workspace_gib": workspace_gib,
    }


def engines_key(bundle_dir: Path, settings: dict[str, Any], here: dict[str, str] | None = None) -> str:
    """Same upstream bundle, same settings, same machine (the fingerprint fields an engine
    must match; `here` when the caller has it): the engines are up to date."""
    try:
        here = here or current_fingerprint(driver=False)
    except BackendUnavailable as e:
        return make_key("tensorrt", key_of(bundle_dir), settings, str(e))
    return make_key("tensorrt", key_of(bundle_dir), settings, {k: here[k] for k in MUST_MATCH})


def training_texts(data: Any, n: int = 10000) -> list[str]:
    """Up to n training texts, whose token lengths shape the default sequence profile."""
    split = load_data(data.model_copy(update={"max_train_samples": n}), ("train",)).splits.get("train")
    return split.texts if split is not None else []


def timing_cache_path(bundle_out: Path) -> Path:
    return bundle_out.parent / f"{bundle_out.name}.timing.cache"


def require_tensorrt() -> Any:
    """The tensorrt module, or a one-line error (exit 2) naming what to install."""
    try:
        return import_tensorrt()
    except BackendUnavailable:
        raise FtexportError(f"export --trt: the tensorrt package is not installed; {INSTALL}") from None


def build_engines(
    bundle_dir: str | Path,
    output: str | Path | None = None,
    precisions: list[str] | None = None,
    texts: list[str] | None = None,
    batch: tuple[int, int, int] = (1, 1, 64),
    seq: tuple[int, int, int] | None = None,
    on_longer: str = "error",
    workspace_gib: float = 4.0,
) -> Manifest:
    """Add TensorRT engines to the bundle at `bundle_dir`, written to `output` (default: in
    place, atomically). `texts` (training texts) shape the sequence profile when `seq` is None."""
    trt = require_tensorrt()
    bundle_dir = Path(bundle_dir)
    output = Path(output) if output else bundle_dir
    bundle = Bundle.open(bundle_dir)
    manifest = bundle.manifest
    lengths = token_lengths(bundle, texts) if texts and seq is None else []
    profile = profile_from_lengths(lengths, manifest.max_length, batch, seq)
    origin = f"{len(lengths)} training texts" if lengths else ("the recipe" if seq else "the bundle's max_length (no training texts given)")
    progress.info(f"TensorRT profile: batch {profile.batch}, tokens {profile.seq} (min/opt/max, from {origin})")
    build = build_mode(trt)
    plans = plan_engines(bundle, precisions or ["fp16"], profile, workspace_gib, build)
    fingerprint = current_fingerprint()
    cache_file = timing_cache_path(output)
    cache = cache_file.read_bytes() if cache_file.is_file() else None
    progress.info(
        f"TensorRT {fingerprint['tensorrt']} on {fingerprint['gpu']} (sm {fingerprint['compute_capability']}), "
        f"{'builder flags' if build == FLAGS else 'strongly typed (precision from the graph)'}, "
        f"timing cache {'found' if cache else 'new'}: {cache_file}"
    )
    with stage_dir(output) as tmp, tempfile.TemporaryDirectory(prefix="ftexport-trt-") as work:
        link_tree(bundle_dir, tmp, skip=("ftexport.json", "manifest.json"))
        (tmp / ENGINE_DIR).mkdir(exist_ok=True)
        for plan in plans:
            if plan.cast_fp16:  # the graph TensorRT builds from, not shipped: the engine is what ships
                progress.step(f"export --trt: fp16 cast of {plan.source} for a strongly typed build")
                plan = replace(plan, onnx=fp16_cast(plan.onnx, Path(work) / f"{plan.source}.fp16-cast.onnx"))
            how = ", ".join(plan.flags) if build == FLAGS else "strongly typed"
            progress.step(f"export --trt: {plan.name} engine from {plan.graph} ({how or 'fp32'})")
            engine, built_cache = build_engine(trt, plan, cache, str(cache_file))
            cache = built_cache if built_cache is not None else cache
            rel = f"{ENGINE_DIR}/model.{plan.name}.plan"
            target = unlinked(tmp / rel)
            target.write_bytes(engine)
            manifest.engines[plan.name] = EngineSpec(
                plan.name,
                rel,
                plan.name,
                plan.source,
                profile,
                fingerprint,
                on_longer,
                {
                    "build": build,
                    "graph": plan.graph,
                    "flags": list(plan.flags),
                    "tensorrt": fingerprint["tensorrt"],
                    "workspace_gib": workspace_gib,
                    "profile_from": origin,
                },
            )
            progress.info(f"{rel}: {len(engine) / 2**20:.1f} MiB")
        write_manifest(tmp, manifest)
        settings = settings_of(precisions or ["fp16"], batch, seq, on_longer, workspace_gib)
        StageRecord(
            "tensorrt",
            engines_key(bundle_dir, settings, fingerprint),
            {"bundle": key_of(bundle_dir)},
            {**settings, "profile": profile.to_json(), "profile_from": origin, "build": build},
            {"fingerprint": fingerprint},
        ).write(tmp)
    if cache:
        tmp_cache = cache_file.with_name(f".{cache_file.name}.tmp-{os.getpid()}")
        tmp_cache.write_bytes(cache)
        os.replace(tmp_cache, cache_file)
    return manifest
