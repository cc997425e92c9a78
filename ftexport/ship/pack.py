"""`ftexport pack`: the final bundle. Copies a bundle, records the parity and latency
results it passed in its manifest (and ships the reports, hashed like the models), and
optionally writes a .tar.gz. A bundle whose parity gate failed is not packed."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ftexport_runtime.bundle import Bundle, Manifest, make_tarball, write_manifest

from ..core import progress
from ..core.artifacts import StageRecord, key_of, link_tree, make_key, stage_dir, unlinked
from ..core.errors import GateFailed, RecipeError
from ..core.reports import BENCH_JSON, PARITY_JSON, BenchReport, ParityReport
from ..judge.html import bench_html
from ..tasks import get_task

REPORT_MD = "report.md"


def parity_summary(parity: ParityReport, task: Any) -> dict[str, Any]:
    """What the manifest keeps of the parity report: the verdict, and the scores the task names."""
    keep = ("backend", *task.summary_keys, "passed", "checks", "error")
    full = parity.to_json()
    return {
        "passed": full["passed"],
        "split": full["split"],
        "examples": full["examples"],
        **{k: full[k] for k in ("task", "metric") if k in full},
        "reference": {k: full["reference"][k] for k in task.reference_keys if k in full["reference"]},
        "variants": {n: {k: v[k] for k in keep if k in v} for n, v in full["variants"].items()},
    }


def latency_summary(bench: BenchReport) -> dict[str, Any]:
    return {
        "machine": {k: bench["machine"].get(k) for k in ("cpu", "cores", "cpu_flags", "gpu")},
        "threads": bench["threads"],
        "results": [
            {k: r[k] for k in ("backend", "phase", "batch", "seq_len", "p50_ms", "p90_ms", "p99_ms", "throughput_per_s") if k in r}
            for r in bench["results"]
        ],
        "skipped": bench.get("skipped", {}),
    }


def pack_key(bundle_dir: Path, parity_dir: Path | None, bench_dir: Path | None, tar: bool, variants: list[str] | None = None) -> str:
    keys = [key_of(d) for d in (bundle_dir, parity_dir, bench_dir)]
    return make_key("pack", keys, tar, variants)


def drop_variants(manifest: Manifest, keep: list[str]) -> list[Any]:
    """The manifest as `pack --variants` leaves it: every variant not in `keep` gone (and its
    hashes), the defaults moved to what is kept. Returns the dropped variants; touches no file."""
    dropped = [manifest.variants.pop(name) for name in [n for n in manifest.variants if n not in keep]]
    for v in dropped:
        for rel in (v.file, *v.extra_files):
            manifest.files.pop(rel, None)
    if manifest.default_variant not in keep:
        manifest.default_variant = keep[0]
    manifest.backend_defaults = {b: v for b, v in manifest.backend_defaults.items() if v in keep}
    return dropped


def keep_variants(root: Path, manifest: Manifest, keep: list[str]) -> None:
    """Drop every variant not in `keep` (its files and hashes), so an app that ships one
    precision does not carry, download and hash the others."""
    for dropped in drop_variants(manifest, keep):
        for rel in (dropped.file, *dropped.extra_files):
            (root / rel).unlink(missing_ok=True)  # a hard link into the source bundle: only the link goes


def check_parity_is_of(parity: ParityReport, manifest: Manifest, shipped: list[str], where: str | Path) -> None:
    """A parity report packed into a bundle must be this bundle's: the same task and labels, and a
    verdict on every variant it ships. Another bundle's report, or one that judged nothing (whose
    `passed` is then vacuously true), would ship a verdict nobody measured."""
    fix = "run `ftexport validate` on this bundle and pack with its report"
    if parity.task and parity.task != manifest.task:
        raise RecipeError(f"pack --parity {where}: it judged a {parity.task} model, this bundle is {manifest.task}; {fix}")
    if parity.labels and manifest.labels and list(parity.labels) != list(manifest.labels):
        raise RecipeError(
            f"pack --parity {where}: it judged labels [{', '.join(parity.labels)}], this bundle's are [{', '.join(manifest.labels)}]; {fix}"
        )
    judged = {name.split("@")[0] for name in parity.variants}
    missing = [v for v in shipped if v not in judged]
    if missing:
        raise RecipeError(
            f"pack --parity {where}: no verdict on variant {', '.join(missing)} of this bundle "
            f"(it judged: {', '.join(sorted(judged)) or 'nothing'}); {fix}, or ship fewer with --variants"
        )


def pack(
    bundle_dir: str | Path,
    output: str | Path,
    parity_dir: str | Path | None = None,
    bench_dir: str | Path | None = None,
    tar: bool = False,
    variants: list[str] | None = None,
) -> Path:
    bundle_dir, output = Path(bundle_dir), Path(output)
    bundle = Bundle.open(bundle_dir)
    if variants:
        unknown = [v for v in variants if v not in bundle.manifest.variants]
        if unknown:  # before anything is written
            raise RecipeError(f"pack --variants: no variant {unknown[0]!r} in this bundle (it has: {', '.join(bundle.manifest.variants)})")
    parity = ParityReport.load(parity_dir) if parity_dir else None
    if parity is not None:
        check_parity_is_of(parity, bundle.manifest, variants or list(bundle.manifest.variants), parity_dir)
    bench = BenchReport.load(bench_dir) if bench_dir else None
    if parity is not None and not parity.passed:
        raise GateFailed(f"pack: refusing to pack {bundle_dir}: it failed the parity gate (see {parity_dir}/parity.md)")
    progress.step(f"pack: writing the bundle to {output}")
    manifest = bundle.manifest
    task = get_task(manifest.task)
    with stage_dir(output) as tmp:
        link_tree(bundle_dir, tmp)
        if variants:
            keep_variants(tmp, manifest, variants)
        sections = []
        if parity is not None:
            manifest.parity = parity_summary(parity, task)
            unlinked(tmp / PARITY_JSON).write_text(parity.dumps())
            manifest.files[PARITY_JSON] = ""
            sections.append(task.parity_table(parity))
        if bench is not None:
            manifest.latency = latency_summary(bench)
            unlinked(tmp / BENCH_JSON).write_text(bench.dumps())
            manifest.files[BENCH_JSON] = ""
            sections.append(task.bench_table(bench))
            unlinked(tmp / "report.html").write_text(bench_html(bench, task, parity))
            manifest.files["report.html"] = ""
        if parity is not None:
            sections.insert(0, task.summary_table(parity, bench))
        if sections:
            unlinked(tmp / REPORT_MD).write_text(f"# {manifest.name}\n\n" + "\n\n".join(sections) + "\n")
            manifest.files[REPORT_MD] = ""
        write_manifest(tmp, manifest)
        StageRecord(
            "pack",
            pack_key(bundle_dir, Path(parity_dir) if parity_dir else None, Path(bench_dir) if bench_dir else None, tar, variants),
            {"bundle": key_of(bundle_dir)},
            {"tar": tar, "variants": variants},
        ).write(tmp)
    if tar:
        archive = make_tarball(output, output.parent / f"{output.name}.tar.gz")
        progress.info(f"wrote {archive}")
    return output
