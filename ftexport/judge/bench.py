"""`ftexport bench`: one latency engine for every task. Every backend (runners.py) gets the same
inputs, in the same process, with the same thread count; the task's probe says what the cells
are and how each backend answers them (texts to labels for an encoder, prompt to tokens for a
decoder).

Each cell is checked for parity against the baseline before it is timed (a backend whose
answers differ gets no speed figure); timing runs in `repeats` rounds with the backends
interleaved, so drift on a shared machine lands on every backend alike and shows up as spread
between rounds. Cold start and peak memory come from a fresh process per backend
(coldstart.py). With --compare, an earlier bench.json is the regression baseline.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ftexport_runtime import Predictor
from ftexport_runtime.bundle import Bundle
from ftexport_runtime.errors import BackendUnavailable

from ..core import progress
from ..core.artifacts import StageRecord, key_of, make_key, stage_dir
from ..core.errors import RecipeError, first_line
from ..core.hf import check_reference
from ..core.machine import default_threads, machine_info
from ..core.reports import BENCH_JSON, BenchReport
from ..core.tables import markdown_table, ms, tradeoff_table
from ..core.timing import cycle, summarize, time_calls
from ..data import load_data
from ..tasks import DEFAULT_TASK, get_task
from ..tasks.base import Cell
from .html import bench_html
from .runners import Model, Runner, build_runner, parse_backend, qualify, skip_reason, split_backend

BENCH_MD = "bench.md"
REPORT_HTML = "report.html"


def held_out_texts(data: Any, labelled: bool, n: int = 512) -> list[str]:
    """Texts for the benchmark's inputs: a seeded sample of the recipe's test split."""
    return load_data(data.model_copy(update={"max_test_samples": n}), ("test",), labelled=labelled)["test"].texts


def read_texts(path: str | Path) -> list[str]:
    """One text per line (blank lines ignored), for `ftexport bench --texts`."""
    try:
        texts = [line.strip() for line in Path(path).read_text(encoding="utf-8").splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError) as e:
        raise RecipeError(f"--texts {path}: cannot read it ({first_line(e, 300)}); give a UTF-8 text file with one text per line") from None
    if not texts:
        raise RecipeError(f"--texts {path}: no texts in it; give a UTF-8 text file with one text per line")
    return texts


def bench_key(bundle_dir: Path, reference_dir: Path, section: Any, others: Sequence[Model] = (), scored: Any = None) -> str:
    keys = [key_of(d) or str(Path(d).resolve()) for d in (bundle_dir, reference_dir)]
    more = [(m.label, key_of(m.bundle_dir) or str(m.bundle_dir.resolve()), str(m.reference)) for m in others]
    return make_key("bench", keys, section.model_dump(), *([more] if more else []), *([len(scored[0])] if scored else []))


def run_cell(
    cell: Cell, runners: dict[str, Runner], baselines: dict[str, str], section: Any, probe: Any, failed: dict[str, str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Parity first (a backend whose answers differ from its baseline's gets no speed figure:
    `baselines` maps each backend to the one it is checked against, its own model's PyTorch in
    a multi-model run), then timing in `repeats` rounds with the backends interleaved."""
    where = {"batch": cell.batch, "seq_len": cell.seq_len}
    references: dict[str, Any] = {}
    timed, refused = [], []
    parity: dict[str, dict[str, Any]] = {}
    for name in sorted(runners, key=lambda n: baselines[n] != n):  # baselines first, otherwise in order
        if name in failed:
            continue
        try:
            outputs = [runners[name].calls.check(b) for b in cell.parity_batches]
        except Exception as e:  # a backend that cannot run this cell (compile failure, OOM) is reported, not fatal
            failed[name] = f"failed at batch {cell.batch} seq {cell.seq_len}: {first_line(e, 300)}"
            progress.info(f"{name}: {failed[name]}")
            continue
        baseline = baselines[name]
        reference = references.setdefault(baseline, outputs)  # a failed baseline: the first answers stand in
        ok, check = probe.agree(reference, outputs, section.parity_tolerance)
        check = {"against": baseline, "inputs": cell.batch * len(cell.parity_batches), **check}
        if not ok:
            refused.append({"backend": name, **where, **check, "tolerance": section.parity_tolerance})
            progress.info(
                f"{name:16s} batch {cell.batch:3d} seq {cell.seq_len!s:>4}  REFUSED: answers differ from {baseline} "
                f"(mean |dp| {check.get('mean_prob_diff', float('nan')):.3f})"
            )
        else:
            parity[name] = check
    names = list(parity)
    phases = list(runners[names[0]].calls.phases) if names else []
    times: dict[tuple[str, str], list[float]] = {(n, p): [] for n in names for p in phases}
    rounds: dict[tuple[str, str], list[float]] = {(n, p): [] for n in names for p in phases}
    budget = section.max_seconds / section.repeats if section.max_seconds else None
    for rep in range(section.repeats):
        shift = rep % max(1, len(names))
        for name in names[shift:] + names[:shift]:  # no backend always runs first
            for phase in phases:
                warmup, iterations = probe.iterations(phase, section)
                per_round = max(1, -(-iterations // section.repeats))
                t = time_calls(cycle(runners[name].calls.phases[phase], cell.batches), warmup if rep == 0 else 1, per_round, budget)
                times[(name, phase)] += t
                rounds[(name, phase)].append(float(np.median(t)) * 1e3)
    for name in names:
        for phase in phases:
            stats = summarize(times[(name, phase)], cell.batch)
            r = rounds[(name, phase)]
            stats.update(
                {
                    "round_p50_ms": r,
                    "noise": (max(r) - min(r)) / float(np.median(r)) if len(r) > 1 else 0.0,
                    "tokens": cell.tokens,
                    "parity": parity[name],
                }
            )
            timed.append({"backend": name, **({"phase": phase} if phase else {}), **where, **stats, "_times": times[(name, phase)]})
            progress.info(
                f"{name:16s}{(' ' + phase) if phase else ''} batch {cell.batch:3d} seq {cell.seq_len!s:>4}  p50 {stats['p50_ms']:8.2f} ms  "
                f"p99 {stats['p99_ms']:8.2f} ms  {stats['throughput_per_s']:8.1f} /s  noise {stats['noise']:.1%}"
            )
    return timed, refused


def cold_start(runner: Runner, cells: list[Cell], workdir: Path) -> dict[str, Any]:
    """Start a fresh Python process that loads only this backend and answers one text, then
    runs each cell once: time from process start to the first answer, and peak RSS per cell."""
    cells_file = workdir / "cells.json"
    if not cells_file.exists():
        cells_file.write_text(
            json.dumps([{"batch": c.batch, "seq_len": c.seq_len, "batches": c.batches, "tokens": c.tokens} for c in cells])
        )
    spec_file = workdir / f"{runner.name.replace('/', '__')}.json"
    spec_file.write_text(json.dumps({**runner.spec, "cells_file": str(cells_file)}))
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false", "HF_HUB_OFFLINE": "1"}
    start = time.time()
    proc = subprocess.run(
        [sys.executable, "-m", "ftexport.judge.coldstart", str(spec_file)], capture_output=True, text=True, env=env, timeout=1800
    )
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"the cold-start process failed: {tail[:300]}"}
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["cold_start_s"] = out.pop("first_answer_at") - start
    return out


def bench(
    bundle_dir: str | Path,
    reference_dir: str | Path | None,
    section: Any,
    output: str | Path,
    texts_pool: list[str] | None = None,
    parity: Any = None,
    others: dict[str, tuple[str | Path, str | Path | None]] | None = None,
    label: str = "main",
    accuracy_data: Any = None,
) -> BenchReport:
    """Time every requested backend in each cell; write bench.json, bench.md and report.html
    (plots; with `parity`, the accuracy-vs-latency scatter too).

    others: more models timed in the same run, {label: (bundle, reference or None)}; then every
    backend name carries its model's label (`label` for this bundle), a bare backend is timed
    for every model and "teacher/pytorch" for one. Each model's rows are checked against its
    own PyTorch; speed-ups are against the first model's. accuracy_data: a recipe's data section
    whose whole test split, read with the bundle's labels, scores every backend's accuracy
    (text classification), for a trade-off table."""
    import torch

    output = Path(output)
    models = [_model(label if others else None, bundle_dir, reference_dir)]
    models += [_model(name, b, r) for name, (b, r) in (others or {}).items()]
    bundle = models[0].bundle
    task = get_task(bundle.manifest.task)
    probe = task.bench_probe()
    max_length = bundle.manifest.max_length
    probe.check(section, max_length)  # settings the bundle cannot take fail before any model loads
    _check_models(models, accuracy_data is not None)
    for m in models:
        if m.reference is not None:
            check_reference(m.reference, "reference model" if m.label is None else f"--model {m.label}: the reference model")
    scored = None
    if accuracy_data is not None:
        if not probe.scores_accuracy:
            raise RecipeError(f"bench: accuracy is scored for text classification only, not {task.name}; leave out --accuracy")
        test = load_data(accuracy_data.model_copy(update={"label_names": list(bundle.manifest.labels)}), ("test",))["test"]
        scored = (test.texts, list(test.labels))
    threads = section.threads or default_threads()
    torch.set_num_threads(threads)
    wanted = _wanted(models, section.backends)
    skipped = {q: r for q, (m, b) in wanted.items() if (r := skip_reason(b, m.bundle, m.reference, task))}
    backends = [q for q in wanted if q not in skipped]
    if not backends:
        raise RecipeError(f"bench: none of the backends can run here ({'; '.join(f'{b}: {r}' for b, r in skipped.items())})")

    workdir = Path(tempfile.mkdtemp(prefix="ftexport-bench-"))
    try:
        runners: dict[str, Runner] = {}
        for q in backends:
            m, b = wanted[q]
            try:
                runners[q] = build_runner(b, m.bundle, m.bundle_dir, m.reference, threads, workdir / (m.label or ""), task)
                runners[q].name = q
            except BackendUnavailable as e:  # listed by the machine but not startable (a provider without its libraries): a skipped row
                skipped[q] = str(e)
            except Exception as e:  # noqa: BLE001 - any other failure to start one backend is its row's reason, not the bench's end
                skipped[q] = f"could not start: {first_line(e, 300)}"
        backends = [b for b in backends if b in runners]
        if not backends:
            raise RecipeError(f"bench: none of the backends can run here ({'; '.join(f'{b}: {r}' for b, r in skipped.items())})")
        notes: list[str] = []
        source = next((r.predictor for q, r in runners.items() if r.predictor and wanted[q][0] is models[0]), None)
        cells = probe.cells(section, source or Predictor(bundle, threads=threads), texts_pool, notes)
        progress.step(f"bench: {', '.join(backends)} over {len(cells)} cells, {threads} threads, {section.repeats} rounds")
        for b, reason in skipped.items():
            progress.info(f"{b}: skipped ({reason})")
        baselines = _baselines(models, backends)
        baseline = baselines[backends[0]]
        failed: dict[str, str] = {}
        results, refused = [], []
        for cell in cells:
            timed, bad = run_cell(cell, runners, baselines, section, probe, failed)
            results += timed
            refused += bad
        accuracy = _accuracy(runners, probe, scored, failed) if scored is not None else {}
        cold: dict[str, Any] = {}
        if section.cold_start and probe.cold_start:
            for b in backends:
                if b not in failed:
                    progress.info(f"{b}: cold start and peak memory in a fresh process")
                    cold[b] = cold_start(runners[b], cells, workdir)
        sizes = {q: _model_bytes(wanted[q][0], wanted[q][1], runners[q]) for q in backends}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    results = probe.finish(results)
    for r in results:
        r.pop("_times", None)
    skipped.update(failed)
    cells_by_key = {(r["backend"], r["batch"], r["seq_len"], r.get("phase")): r for r in results}
    for b, c in cold.items():
        for row in c.pop("cells", []):
            r = cells_by_key.get((b, row["batch"], row["seq_len"], None))
            if r is not None:
                r.update({k: v for k, v in row.items() if k in ("peak_rss_mb", "gpu_mb")})
    pytorch = models[0].qualify("pytorch")
    for r in results:
        base = cells_by_key.get((pytorch, r["batch"], r["seq_len"], r.get("phase")))
        r["speedup_vs_pytorch"] = base["p50_ms"] / r["p50_ms"] if base and r["p50_ms"] > 0 else None
        # int8 or GPU slower than fp32 on the CPU is a finding, not something to hide
        fp32 = cells_by_key.get((wanted[r["backend"]][0].qualify("ort-fp32"), r["batch"], r["seq_len"], r.get("phase")))
        kind, device, variant = parse_backend(r["backend"])
        if fp32 and r is not fp32 and (device != "cpu" or "int8" in (variant or "") or kind == "optimum") and r["p50_ms"] > fp32["p50_ms"]:
            r["flag"] = f"slower than ort-fp32 on the CPU ({r['p50_ms']:.2f} vs {fp32['p50_ms']:.2f} ms)"
    seq_len, batch_sizes = probe.headline(section, max_length, cells)
    details: dict[str, Any] = {"task": task.name, **probe.report_fields(section, max_length), "model_bytes": sizes}
    if others:
        details["models"] = {m.label: {"bundle": str(m.bundle_dir), "reference": str(m.reference) if m.reference else None} for m in models}
    if scored is not None:
        details["accuracy"] = accuracy
        details["accuracy_texts"] = len(scored[0])
    report = BenchReport(
        machine=machine_info(),
        threads=threads,
        seq_len=seq_len,
        batch_sizes=batch_sizes,
        warmup=section.warmup,
        iterations=section.iterations,
        repeats=section.repeats,
        baseline=baseline,
        results=results,
        skipped=skipped,
        notes=notes,
        cold_start=cold,
        refused=refused,
        details=details,
    )
    key = bench_key(models[0].bundle_dir, models[0].reference or models[0].bundle_dir, section, models[1:], scored)
    with stage_dir(output) as tmp:
        (tmp / BENCH_JSON).write_text(report.dumps())
        (tmp / BENCH_MD).write_text(task.bench_table(report) + "\n" + (f"\n{tradeoff_table(report)}\n" if others or scored else ""))
        (tmp / REPORT_HTML).write_text(bench_html(report, task, parity))
        StageRecord("bench", key, {"bundle": key_of(models[0].bundle_dir)}, section.model_dump()).write(tmp)
    return report


def _model(label: str | None, bundle_dir: str | Path, reference: str | Path | None) -> Model:
    where = f"--model {label}: " if label else ""
    try:
        bundle = Bundle.open(bundle_dir)
    except Exception as e:  # noqa: BLE001 - the runtime's error names what is wrong with the folder
        raise RecipeError(f"{where}{first_line(e, 300)}") from None
    return Model(label, bundle, Path(bundle_dir), Path(reference) if reference else None)


def _check_models(models: list[Model], scoring: bool) -> None:
    """Models timed together answer the same question: the same task, and (to be scored on
    the same labelled texts) the same labels in the same order."""
    first = models[0].bundle.manifest
    for m in models[1:]:
        man = m.bundle.manifest
        if man.task != first.task:
            raise RecipeError(
                f"--model {m.label}: {m.bundle_dir} is a {man.task} bundle and {models[0].bundle_dir} a {first.task} one; "
                "models timed in one run must do the same task"
            )
        if scoring and list(man.labels) != list(first.labels):
            raise RecipeError(
                f"--model {m.label}: {m.bundle_dir} predicts {list(man.labels)}, {models[0].bundle_dir} {list(first.labels)}; "
                "models scored on the same texts need the same labels in the same order"
            )
    labels = [m.label for m in models]
    if len(set(labels)) != len(labels):
        raise RecipeError(f"--model: the labels {labels} repeat; give every model its own name (--label names the first)")


def row_names(models: list[str | None], names: list[str]) -> dict[str, tuple[str | None, str]]:
    """Each row a run times -> (its model's label, bare backend), for the models' labels (None
    for the one model of a one-model run) and the backends asked: a bare name for every model,
    a labelled one for its model; model by model, in the order asked."""
    labels = set(models)
    asked = [(name, *split_backend(name)) for name in names]
    for name, label, backend in asked:
        if label is not None and labels == {None}:  # one model: its rows carry no name
            raise RecipeError(
                f"backend {name}: this run times one model, whose backends go unnamed: give {backend}, or time several with --model"
            )
        if label is not None and label not in labels:
            raise RecipeError(f"backend {name}: no model is called {label} (the models: {', '.join(map(str, labels))})")
    out: dict[str, tuple[str | None, str]] = {}
    for model in models:
        for _, label, backend in asked:
            if label is None or label == model:
                out[qualify(model, backend)] = (model, backend)
    return out


def _wanted(models: list[Model], names: list[str]) -> dict[str, tuple[Model, str]]:
    """Qualified backend name -> (model, bare backend), as row_names names the rows."""
    by_label = {m.label: m for m in models}
    return {name: (by_label[label], backend) for name, (label, backend) in row_names([m.label for m in models], names).items()}


def _baselines(models: list[Model], backends: list[str]) -> dict[str, str]:
    """Each backend -> the one it is checked against: its model's PyTorch row when timed,
    else that model's first row."""
    out: dict[str, str] = {}
    for m in models:
        own = [q for q in backends if split_backend(q)[0] == m.label]
        torch_rows = [q for kind in ("pytorch", "pytorch-cuda") for q in own if split_backend(q)[1] == kind]
        base = (torch_rows or own or [None])[0]
        out.update({q: base for q in own})  # type: ignore[misc]
    return out


def _accuracy(runners: dict[str, Runner], probe: Any, scored: tuple[list[str], list[int]], failed: dict[str, str]) -> dict[str, float]:
    """Each backend's accuracy on the labelled texts (the same texts for all), batches of 64."""
    texts, labels = scored
    out = {}
    for name, r in runners.items():
        if name in failed:
            continue
        outputs = [r.calls.check(texts[i : i + 64]) for i in range(0, len(texts), 64)]
        out[name] = probe.accuracy(outputs, labels)
        progress.info(f"{name:16s} accuracy {out[name]:.4f} on {len(texts)} labelled texts")
    return out


def _model_bytes(model: Model, backend: str, runner: Runner) -> int | None:
    """What the backend loads: the bundle variant's ONNX file, the PyTorch weights, or the plain Optimum int8 model."""
    kind, _, variant = parse_backend(backend)
    if kind == "ort":
        return model.bundle.path_of(model.bundle.variant(variant).file).stat().st_size
    if kind == "optimum":
        return sum(f.stat().st_size for f in Path(runner.spec["optimum_dir"]).glob("*.onnx*"))
    if kind.startswith("pytorch") and model.reference is not None:
        return sum(f.stat().st_size for f in model.reference.iterdir() if f.suffix in (".safetensors", ".bin"))
    return None


def bench_table(report: Any) -> str:
    """The latency table of a report, by the task that wrote it."""
    return get_task(report.get("task") or DEFAULT_TASK).bench_table(report)


def compare_reports(old: Any, new: Any, tolerance: float, relative_to: str | None = None) -> list[dict[str, Any]]:
    """Per cell (backend, batch, seq[, phase]) found in both reports: old and new p50 and the
    change. A cell whose p50 grew by more than `tolerance` (0.1 = 10%) is a regression.

    relative_to (a backend, e.g. pytorch): each p50 is first divided by that backend's p50 for
    the same batch and length in the same report, so a machine that was slower or faster as a
    whole between the two runs (a shared host) cancels out; the baseline's own rows are shown
    with their raw change and never judged."""

    def key(r: dict[str, Any]) -> tuple[Any, ...]:
        return (r["backend"], r["batch"], r["seq_len"], r.get("phase"))

    def baselines(report: Any) -> dict[tuple[Any, ...], float]:
        return {(r["batch"], r["seq_len"], r.get("phase")): r["p50_ms"] for r in report["results"] if r["backend"] == relative_to}

    before = {key(r): r for r in old["results"]}
    old_base, new_base = (baselines(old), baselines(new)) if relative_to else ({}, {})
    rows = []
    for r in new["results"]:
        o = before.get(key(r))
        if o is None:
            continue
        change = r["p50_ms"] / o["p50_ms"] - 1.0
        row = {
            "backend": r["backend"] + (f" ({r['phase']})" if r.get("phase") else ""),
            "batch": r["batch"],
            "seq_len": r["seq_len"],
            "old_p50_ms": o["p50_ms"],
            "new_p50_ms": r["p50_ms"],
            "change": change,
            "regression": change > tolerance,
        }
        if relative_to:
            cell = (r["batch"], r["seq_len"], r.get("phase"))
            if r["backend"] == relative_to or cell not in old_base or cell not in new_base:
                row["regression"] = False
            else:
                row["relative_change"] = (r["p50_ms"] / new_base[cell]) / (o["p50_ms"] / old_base[cell]) - 1.0
                row["regression"] = row["relative_change"] > tolerance
        rows.append(row)
    return rows


def compare_table(rows: list[dict[str, Any]], tolerance: float, relative_to: str | None = None) -> str:
    def verdict(r: dict[str, Any]) -> str:
        if relative_to and "relative_change" not in r:
            return "baseline" if r["backend"].split(" ")[0] == relative_to else "not judged (no baseline cell)"
        return "REGRESSION" if r["regression"] else "ok"

    body = [
        [
            r["backend"],
            r["batch"],
            r["seq_len"],
            ms(r["old_p50_ms"]),
            ms(r["new_p50_ms"]),
            f"{r['change']:+.1%}",
            *([f"{r['relative_change']:+.1%}" if "relative_change" in r else None] if relative_to else []),
            verdict(r),
        ]
        for r in rows
    ]
    judged = f"p50 relative to {relative_to} in the same run" if relative_to else "p50"
    head = f"p50 change per cell (regression: {judged} slower by more than {tolerance:.0%})\n\n"
    headers = [
        "backend",
        "batch",
        "seq",
        "old p50 ms",
        "new p50 ms",
        "change",
        *([f"change vs {relative_to}"] if relative_to else []),
        "verdict",
    ]
    return head + markdown_table(headers, body)
