"""Loopback load test of `ftexport-runtime serve`, with and without micro-batching.

    python tools/loadtest.py runs/quickstart/bundle [--duration 30] [--concurrency 16]
                             [--texts FILE] [--out result.json]

For each mode it starts `ftexport-runtime serve BUNDLE` in a subprocess on a free loopback
port, runs `concurrency` clients that each send one text per request back to back for
`duration` seconds (after a short warm-up), and stops the server with SIGTERM. It reports
p50/p99 latency and throughput, and checks every answer against Predictor.predict run
directly on the same text, alone. A request with no 200 answer is lost. Where the server
computes exactly what the direct call does (no batching, or a batch-independent fp32/fp16
variant) an answer is wrong when a score is off by more than --atol or the label differs.
A dynamically quantized int8 model picks its activation scales per model call, so batched
with other texts a text's scores move and borderline labels can flip: there only a score
off by more than --loose-atol counts as wrong (an answer meant for another request), and
label changes are counted and reported. Exit status 1 when any request was lost or wrong.

Modes: batching, no-batching, and either with @VARIANT (batching@fp32) to serve another
variant of the bundle; the default runs the bundle's own variant both ways and fp32 with
batching, the strict check of the batching path.

Texts: the SST-2 test split ($FTEXPORT_DATA/sst2/test.tsv, default ../shared/data) or a
file with one text per line. Needs ftexport-runtime[serve] and httpx; never torch.
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import itertools
import json
import os
import platform
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx

REPO = Path(__file__).resolve().parents[1]


def load_texts(path: str | None) -> tuple[list[str], str]:
    if path:
        with open(path, encoding="utf-8") as f:
            texts = [line.rstrip("\n") for line in f if line.strip()]
        return texts, path
    root = Path(os.environ.get("FTEXPORT_DATA") or REPO.parent / "shared" / "data")
    tsv = root / "sst2" / "test.tsv"
    if not tsv.is_file():
        sys.exit(f"error: {tsv} not found; set FTEXPORT_DATA to the folder holding sst2/ or pass --texts FILE")
    with open(tsv, encoding="utf-8", newline="") as f:
        texts = [row["sentence"].strip() for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    return texts, "SST-2 test split (sst2/test.tsv)"


def reference(bundle: str, variant: str | None, texts: list[str]) -> tuple[list[dict], str]:
    """Each text's answer from the Predictor on its own (exactly what an unbatched server
    returns) and the variant's precision."""
    from ftexport_runtime import Predictor

    p = Predictor.from_bundle(bundle, variant=variant)
    return [p.predict([t])[0].as_dict() for t in texts], p.variant.precision


def machine() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name"))
    except (OSError, StopIteration):
        model = platform.processor() or platform.machine()
    return f"{model}, {os.cpu_count()} cores"


def busy_seconds() -> float | None:
    """CPU seconds all processes have used since boot (Linux), to tell how busy the machine
    was with other work during a run."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def process_seconds(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            parts = f.read().rsplit(")", 1)[1].split()
        return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Tally:
    sent: int = 0
    ok: int = 0
    lost: int = 0  # no 200 answer (error status, connection error, timeout, wrong count)
    wrong: int = 0
    label_changes: int = 0  # label differs from the direct answer (allowed only on a tie within atol)
    max_score_diff: float = 0.0
    statuses: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)  # seconds, measured window only
    measured_ok: int = 0
    window_s: float = 0.0


def check(answer: dict, want: dict, strict: bool, atol: float, loose_atol: float, tally: Tally) -> None:
    diff = max(abs(answer["scores"][k] - v) for k, v in want["scores"].items())
    tally.max_score_diff = max(tally.max_score_diff, diff)
    changed = answer["label"] != want["label"]
    tally.label_changes += changed
    if strict:
        top = sorted(want["scores"].values(), reverse=True)
        tie = len(top) > 1 and top[0] - top[1] <= 2 * atol
        tally.wrong += diff > atol or (changed and not tie)
    else:
        tally.wrong += diff > loose_atol


async def drive(url: str, texts: list[str], expected: list[dict], strict: bool, args: argparse.Namespace) -> Tally:
    tally = Tally()
    limits = httpx.Limits(max_connections=args.concurrency, max_keepalive_connections=args.concurrency)
    counter = itertools.count()
    loop_start = time.perf_counter()
    start = loop_start + args.warmup
    end = start + args.duration
    last_finish = start

    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=args.timeout) as client:

        async def one_client() -> None:
            nonlocal last_finish
            while (t0 := time.perf_counter()) < end:
                i = next(counter) % len(texts)
                tally.sent += 1
                try:
                    r = await client.post("/v1/predict", json={"texts": [texts[i]]})
                except httpx.HTTPError as e:
                    tally.lost += 1
                    tally.statuses[type(e).__name__] = tally.statuses.get(type(e).__name__, 0) + 1
                    continue
                t1 = time.perf_counter()
                tally.statuses[str(r.status_code)] = tally.statuses.get(str(r.status_code), 0) + 1
                preds = r.json().get("predictions") if r.status_code == 200 else None
                if not isinstance(preds, list) or len(preds) != 1:
                    tally.lost += 1
                    continue
                tally.ok += 1
                check(preds[0], expected[i], strict, args.atol, args.loose_atol, tally)
                if t0 >= start:
                    tally.latencies.append(t1 - t0)
                    tally.measured_ok += 1
                    last_finish = max(last_finish, t1)

        await asyncio.gather(*(one_client() for _ in range(args.concurrency)))
    tally.window_s = last_finish - start
    return tally


def start_server(args: argparse.Namespace, batching: bool, variant: str | None) -> tuple[subprocess.Popen, str, list[str]]:
    cmd = [sys.executable, "-m", "ftexport_runtime.cli", "serve", args.bundle, "--port", "0"]
    if variant:
        cmd += ["--variant", variant]
    for name in ("threads", "max_batch", "max_wait_ms", "queue_size"):
        value = getattr(args, name)
        if value is not None:
            cmd += [f"--{name.replace('_', '-')}", str(value)]
    if not batching:
        cmd.append("--no-batching")
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    lines: queue.Queue[str] = queue.Queue()
    log: list[str] = []

    def pump() -> None:
        for line in proc.stderr:  # type: ignore[union-attr]
            log.append(line.rstrip())
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=0.5)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if " at http://" in line:
            url = line.split(" at ", 1)[1].split()[0]
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/healthz", timeout=2).status_code == 200:
                        return proc, url, log
                except httpx.HTTPError:
                    pass
                time.sleep(0.1)
            break
    proc.kill()
    time.sleep(0.2)
    sys.exit("error: serve did not start:\n" + "\n".join(log[-10:]))


def run_mode(args: argparse.Namespace, batching: bool, variant: str | None, texts: list[str], expected: list[dict], precision: str) -> dict:
    strict = not batching or precision != "int8"
    proc, url, log = start_server(args, batching, variant)
    try:
        meta = httpx.get(f"{url}/v1/metadata").json()
        before = (time.perf_counter(), busy_seconds(), process_seconds(proc.pid), process_seconds(os.getpid()))
        tally = asyncio.run(drive(url, texts, expected, strict, args))
        after = (time.perf_counter(), busy_seconds(), process_seconds(proc.pid), process_seconds(os.getpid()))
        stats = httpx.get(f"{url}/v1/stats").json()
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
            code = None
    lat = sorted(tally.latencies)
    cpu: dict[str, float] = {}
    if None not in before + after:
        wall, total, server, client = (b - a for a, b in zip(before, after))  # type: ignore[operator]
        cores = os.cpu_count() or 1
        cpu = {
            "server_cores": round(server / wall, 2),
            "client_cores": round(client / wall, 2),
            # other processes' share of the machine during the run: near 0 on a quiet machine
            "other_cores": round(max(0.0, total - server - client) / wall, 2),
            "machine_cores": cores,
        }

    def pct(q: float) -> float:
        return round(1000 * lat[min(len(lat) - 1, int(q * len(lat)))], 2) if lat else float("nan")

    return {
        "batching": batching,
        "variant": meta["variant"],
        "check": f"strict (atol {args.atol})" if strict else f"loose (atol {args.loose_atol}; label changes reported)",
        "requests": tally.sent,
        "ok": tally.ok,
        "lost": tally.lost,
        "wrong": tally.wrong,
        "label_changes": tally.label_changes,
        "max_score_diff": tally.max_score_diff,
        "statuses": tally.statuses,
        "p50_ms": pct(0.50),
        "p99_ms": pct(0.99),
        "mean_ms": round(1000 * statistics.fmean(lat), 2) if lat else float("nan"),
        "throughput_rps": round(tally.measured_ok / tally.window_s, 1) if tally.window_s > 0 else 0.0,
        "measured_requests": tally.measured_ok,
        "model_calls": stats["batches"],
        "mean_batch": round(stats["texts"] / stats["batches"], 2) if stats["batches"] else 0.0,
        "largest_batch": stats["largest_batch"],
        "rejected_503": stats["rejected"],
        "cpu": cpu,
        "serving": meta["serving"],
        "server_exit_code": code,
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("bundle", help="bundle directory or .tar.gz")
    ap.add_argument("--duration", type=float, default=30.0, help="measured seconds per mode (default: 30)")
    ap.add_argument("--warmup", type=float, default=3.0, help="unmeasured seconds before each measurement (default: 3)")
    ap.add_argument("--concurrency", type=int, default=16, help="concurrent clients (default: 16)")
    ap.add_argument("--texts", help="file with one text per line (default: the SST-2 test split)")
    ap.add_argument(
        "--atol", type=float, default=1e-4, help="strict check: largest score difference from the direct answer (default: 1e-4)"
    )
    ap.add_argument(
        "--loose-atol",
        type=float,
        default=0.5,
        help="int8 with batching: a larger score difference is an answer meant for another text (default: 0.5)",
    )
    ap.add_argument("--timeout", type=float, default=30.0, help="seconds before a request counts as lost (default: 30)")
    ap.add_argument(
        "--modes",
        default="batching,no-batching,batching@fp32",
        help="runs, comma-separated: batching | no-batching, each optionally @VARIANT (default: batching,no-batching,batching@fp32)",
    )
    ap.add_argument("--threads", type=int, help="serve --threads")
    ap.add_argument("--max-batch", type=int, help="serve --max-batch")
    ap.add_argument("--max-wait-ms", type=float, help="serve --max-wait-ms")
    ap.add_argument("--queue-size", type=int, help="serve --queue-size")
    ap.add_argument("--out", help="write the result as JSON here")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or {m.split("@")[0] for m in modes} - {"batching", "no-batching"}:
        ap.error(f"--modes takes batching and/or no-batching, each optionally @VARIANT; got {args.modes!r}")
    if args.duration <= 0 or args.concurrency < 1:
        ap.error("--duration must be positive and --concurrency at least 1")

    texts, source = load_texts(args.texts)
    if not texts:
        ap.error(f"no texts in {source}")
    references: dict[str | None, tuple[list[dict], str]] = {}
    results = {}
    for mode in modes:
        kind, _, name = mode.partition("@")
        variant = name or None
        if variant not in references:
            t = time.perf_counter()
            references[variant] = reference(args.bundle, variant, texts)
            print(
                f"reference ({variant or 'default variant'}): {len(texts)} texts from {source}, predicted one at a time "
                f"in {time.perf_counter() - t:.1f} s",
                file=sys.stderr,
            )
        expected, precision = references[variant]
        print(f"{mode}: {args.concurrency} clients for {args.warmup:g} s warm-up + {args.duration:g} s ...", file=sys.stderr)
        results[mode] = run_mode(args, kind == "batching", variant, texts, expected, precision)

    import onnxruntime

    report = {
        "tool": "tools/loadtest.py",
        "command": "python tools/loadtest.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "machine": machine(),
        "python": platform.python_version(),
        "onnxruntime": onnxruntime.__version__,
        "bundle": args.bundle,
        "texts": source,
        "n_texts": len(texts),
        "texts_per_request": 1,
        "concurrency": args.concurrency,
        "duration_s": args.duration,
        "warmup_s": args.warmup,
        "atol": args.atol,
        "modes": results,
    }
    print(
        f"\n{'mode':<16} {'variant':<8} {'requests':>9} {'p50 ms':>8} {'p99 ms':>8} {'req/s':>8} {'mean batch':>10} "
        f"{'lost':>5} {'wrong':>6} {'label changes':>13} {'other load':>10}"
    )
    for mode, r in results.items():
        print(
            f"{mode:<16} {r['variant']:<8} {r['measured_requests']:>9} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} "
            f"{r['throughput_rps']:>8.1f} {r['mean_batch']:>10.2f} {r['lost']:>5} {r['wrong']:>6} {r['label_changes']:>13} "
            f"{r['cpu'].get('other_cores', float('nan')):>10.2f}"
        )
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
        print(f"wrote {args.out}", file=sys.stderr)
    bad = {m: (r["lost"], r["wrong"]) for m, r in results.items() if r["lost"] or r["wrong"]}
    if bad:
        print("FAILED: " + "; ".join(f"{m}: {lost} lost, {wrong} wrong" for m, (lost, wrong) in bad.items()), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
