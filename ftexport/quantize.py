"""`ftexport quantize`: add compressed variants to a bundle.

Reads a bundle, writes a new bundle holding the same files plus one model per mode:

    dynamic  model.int8.onnx  int8 weights, activations scaled at run time (CPU)
    fp16     model.fp16.onnx  fp16, attention fused for the GPU (CUDA, TensorRT)

The fp32 model stays so the runtime and the parity gate can compare against it. The int8
model becomes the CPU default and the fp16 model the CUDA default.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from ftexport_runtime.bundle import Bundle, Manifest, Variant, write_manifest

from . import progress
from .artifacts import link_tree, make_key, read_record, stage_dir, write_record
from .errors import RecipeError
from .export import fp16_onnx, onnx_io, quantize_dynamic_onnx

MODES = {"dynamic": ("int8", "model.int8.onnx"), "fp16": ("fp16", "model.fp16.onnx")}


def quantize_key(bundle_dir: Path, modes: list[str], per_channel: bool, reduce_range: bool) -> str:
    rec = read_record(bundle_dir) or {}
    return make_key("quantize", rec.get("key") or str(bundle_dir.resolve()), sorted(modes), per_channel, reduce_range)


def quantize(bundle_dir: str | Path, output: str | Path, modes: list[str] | tuple[str, ...] = ("dynamic",), per_channel: bool = True, reduce_range: bool = False) -> Manifest:
    bundle_dir, output = Path(bundle_dir), Path(output)
    modes = list(dict.fromkeys(modes))
    if not modes:
        raise RecipeError("quantize: no mode given; choose from: " + ", ".join(MODES))
    for mode in modes:
        if mode not in MODES:
            raise RecipeError(f"quantize mode {mode!r} is not supported; choose from: {', '.join(MODES)}")
    bundle = Bundle.open(bundle_dir)  # refuses a tampered or truncated model before any work
    src = bundle.variant("fp32")
    onnx_io(bundle.path_of(src.file))
    manifest = bundle.manifest
    with stage_dir(output) as tmp:
        link_tree(bundle_dir, tmp)
        for mode in modes:
            name, file = MODES[mode]
            work = tmp / f"_{mode}"
            if mode == "dynamic":
                progress.step("quantize: dynamic int8 through Optimum's ORTQuantizer")
                produced, detail = quantize_dynamic_onnx(tmp / src.file, work, per_channel, reduce_range)
            else:
                progress.step("quantize: fp16 through Optimum's ORTOptimizer (O2, fused for the GPU)")
                produced, detail = fp16_onnx(tmp, src.file, work)
            shutil.move(str(produced), tmp / file)
            shutil.rmtree(work)
            onnx_io(tmp / file)
            manifest.variants[name] = Variant(name, file, name, details=detail)
            mib = (tmp / file).stat().st_size / 2**20
            progress.info(f"{file}: {mib:.1f} MiB (fp32 {(tmp / src.file).stat().st_size / 2**20:.1f} MiB)")
        if "int8" in manifest.variants:
            manifest.default_variant = "int8"
        if "fp16" in manifest.variants:
            manifest.backend_defaults["cuda"] = "fp16"
            manifest.backend_defaults["tensorrt"] = "fp16"
        write_manifest(tmp, manifest)
        write_record(
            tmp, "quantize", quantize_key(bundle_dir, modes, per_channel, reduce_range),
            {"bundle": (read_record(bundle_dir) or {}).get("key")},
            {"modes": modes, "per_channel": per_channel, "reduce_range": reduce_range}, {},
        )
    return manifest
