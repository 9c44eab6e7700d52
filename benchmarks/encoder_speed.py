"""The default router's encoder on PyTorch and on ONNX Runtime int8, side by side: speed and parity.

Speed: cold-prompt scoring of the default router (every run scores prompts no cache has seen, in one batch, as
a new job's scoring step does), prompts/s, the two backends interleaved (their order alternating) so load from
other processes on the machine hits both alike; the machine's load average is recorded beside each run.
Parity: the same prompts scored both ways: Spearman correlation of the scores, and how many decisions agree
when the batch is split at its exact 30% quantile (as a job with --strong-fraction 0.3 routes).
Quality (--quality): held-out APGR of benchmarks/router_quality.py's protocols, the default router run both
ways: "torch" trains and scores on PyTorch embeddings; "onnx (torch heads)" scores the same fitted heads on
ONNX embeddings (the shipped checkpoint's case: its heads were fitted on PyTorch); "onnx" trains and scores
on ONNX embeddings (what `routeyard router train` does on a CPU), with the L2 the PyTorch run chose.

    python benchmarks/encoder_speed.py [--prompts 300] [--runs 5] [--quality] [--sets ...]
Writes benchmarks/results/encoder_speed.{json,md} (a run without --quality keeps the earlier quality rows).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from scipy.stats import spearmanr

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.protocols import IN_DISTRIBUTION, UNLIKE, protocols  # noqa: E402
from routers.base import RouterRuntime, TrainOptions, embedder_for  # noqa: E402
from routers.data import outcome_to_preference, read_routellm_evals  # noqa: E402
from routers.evaluate import evaluate, mean_curve, summarize  # noqa: E402
from routers.registry import DEFAULT_ROUTER, load_router, train_router  # noqa: E402

DATA = Path(os.environ.get("ROUTEYARD_DATA", ROOT.parent / "shared" / "data")) / "routellm-evals"
BACKENDS = ("torch", "onnx")


def decisions_agree(a: np.ndarray, b: np.ndarray, strong_fraction: float = 0.3) -> float:
    """Share of prompts routed the same way when each ranking sends its top `strong_fraction` strong."""
    k = round(len(a) * strong_fraction)
    top_a, top_b = np.zeros(len(a), bool), np.zeros(len(b), bool)
    top_a[np.argsort(-a, kind="stable")[:k]] = True
    top_b[np.argsort(-b, kind="stable")[:k]] = True
    return float(np.mean(top_a == top_b))


def speed(prompts: list[str], runs: int, cache: Path) -> dict:
    routers = {b: load_router(DEFAULT_ROUTER, RouterRuntime(device="cpu", encoder_backend=b)).router
               for b in BACKENDS}
    for router in routers.values():
        router.embedder._export_dir = cache  # the export is cached there; the embeddings are not (cold prompts)
        router.win_rate(["warm up the model"])
    scores = {b: r.win_rate(prompts) for b, r in routers.items()}
    per_s: dict[str, list[float]] = {b: [] for b in BACKENDS}
    cpu_s: dict[str, list[float]] = {b: [] for b in BACKENDS}  # this process's CPU time: what load does not skew
    load: list[float] = []
    for run in range(runs):
        for b in BACKENDS if run % 2 == 0 else BACKENDS[::-1]:
            fresh = [f"[{run}:{b}:{time.time_ns()}] {p}" for p in prompts]
            start, cpu = time.perf_counter(), time.process_time()
            routers[b].win_rate(fresh)
            per_s[b].append(len(fresh) / (time.perf_counter() - start))
            cpu_s[b].append((time.process_time() - cpu) * 100 / len(fresh))
        load.append(os.getloadavg()[0])
        print(f"run {run}: " + ", ".join(f"{b} {v[-1]:.1f}/s" for b, v in per_s.items()) + f", load {load[-1]:.2f}",
              flush=True)
    median = {b: statistics.median(v) for b, v in per_s.items()}
    return {"prompts": len(prompts), "runs": runs, "load_avg_1m": load,
            "prompts_per_s": {b: {"median": median[b], "runs": per_s[b]} for b in BACKENDS},
            "speedup": median["onnx"] / median["torch"],
            "cpu_s_per_100": {b: statistics.median(v) for b, v in cpu_s.items()},
            "cpu_s_per_100_runs": cpu_s,
            "speedup_per_run": [o / t for o, t in zip(per_s["onnx"], per_s["torch"], strict=True)],
            "spearman": float(spearmanr(scores["torch"], scores["onnx"])[0]),
            "decisions_agree_at_0.3": decisions_agree(scores["torch"], scores["onnx"]),
            "max_abs_score_diff": float(np.abs(scores["torch"] - scores["onnx"]).max())}


def quality(rows: list, sets: list[str], cache: Path, save: Callable[[dict], None]) -> dict[str, dict[str, float]]:
    runtimes = {b: RouterRuntime(device="cpu", cache_dir=cache, encoder_backend=b) for b in BACKENDS}
    table: dict[str, dict[str, float]] = {}
    for set_name, folds in protocols(rows, sets).items():
        curves: dict[str, list] = {}
        tests = []
        for train, test in folds:
            tests += test
            prefs = [outcome_to_preference(o) for o in train]
            prompts = [o.prompt for o in test]
            torch_router = train_router(DEFAULT_ROUTER, prefs, runtimes["torch"], TrainOptions(seed=0))
            scores = {"torch": torch_router.win_rate(prompts)}
            # The same heads on ONNX features: only the encoder differs.
            onnx_embedder = embedder_for(torch_router.config.encoder, runtimes["onnx"], layers=True)
            scores["onnx (torch heads)"] = torch_router.heads.score(onnx_embedder.embed(prompts).astype(np.float64))
            # Trained on ONNX features with the L2 the PyTorch run chose: its grouped validation (4 x 5 fits) is
            # what makes training slow, and this measures what the features change.
            onnx_router = train_router(DEFAULT_ROUTER, prefs, runtimes["onnx"],
                                       TrainOptions(seed=0, params={"c": torch_router.config.c}))
            scores["onnx"] = onnx_router.win_rate(prompts)
            _, fold_curves = evaluate(scores, test)
            for name in scores:
                curves.setdefault(name, []).append(fold_curves[name])
            print(f"{set_name}: fold of {len(test)} done, c torch {torch_router.config.c:g} "
                  f"onnx {onnx_router.config.c:g}", flush=True)
        strong, weak = float(np.mean([o.strong for o in tests])), float(np.mean([o.weak for o in tests]))
        table[set_name] = {n: summarize(mean_curve(c), len(tests), strong, weak).apgr for n, c in curves.items()}
        print(set_name, json.dumps({n: round(v, 4) for n, v in table[set_name].items()}), flush=True)
        save(table)  # each protocol as it ends: a long run stopped part way keeps what it measured
    return table


def _speed_lines(s: dict, machine: str) -> list[str]:
    lines = ["| backend | prompts/s (median) | runs | vs torch | CPU s per 100 prompts (median) |",
             "| --- | --- | --- | --- | --- |"]
    for b in BACKENDS:
        r = s["prompts_per_s"][b]
        ratio = r["median"] / s["prompts_per_s"]["torch"]["median"]
        lines.append(f"| {b} | {r['median']:.1f} | {', '.join(f'{v:.1f}' for v in r['runs'])} | {ratio:.2f}x "
                     f"| {s['cpu_s_per_100'][b]:.1f} |")
    lines += ["", f"Per-run ratio onnx/torch: {', '.join(f'{r:.2f}' for r in s['speedup_per_run'])}; "
              f"1-minute load average after each run: {', '.join(f'{v:.2f}' for v in s['load_avg_1m'])} "
              f"({machine}).",
              f"Parity on {s['prompts']} prompts: Spearman {s['spearman']:.4f}, decisions equal at a 30% strong "
              f"share {s['decisions_agree_at_0.3']:.1%}, largest score difference {s['max_abs_score_diff']:.4f}."]
    return lines


def markdown(report: dict) -> str:
    lines: list[str] = []
    for key, title in (("speed", "Speed"), ("speed_loaded", "An earlier run, on a loaded machine")):
        if key in report:
            lines += [f"{title}:", "", *_speed_lines(report[key], report["machine"]), ""]
    q = report.get("quality")
    if q:
        names = list(next(iter(q.values())))
        lines += ["", "| held-out set | " + " | ".join(names) + " | onnx (torch heads) - torch | onnx - torch |",
                  "|" + " --- |" * (len(names) + 3)]
        for set_name, r in q.items():
            lines.append(f"| {set_name} | " + " | ".join(f"{r[n]:.4f}" for n in names)
                         + f" | {r['onnx (torch heads)'] - r['torch']:+.4f} | {r['onnx'] - r['torch']:+.4f} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--quality", action="store_true", help="also held-out APGR both ways (slow: trains)")
    parser.add_argument("--no-speed", action="store_true", help="keep the earlier speed rows")
    parser.add_argument("--sets", default=",".join((*UNLIKE, *IN_DISTRIBUTION)))
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "cache")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    rows = read_routellm_evals(DATA)
    prompts = [r.prompt for r in rows[:: max(1, len(rows) // args.prompts)]][: args.prompts]
    path = args.out / "encoder_speed.json"
    report = json.loads(path.read_text()) if path.exists() else {}
    report["machine"] = f"{platform.machine()}, {os.cpu_count()} cores"
    args.out.mkdir(parents=True, exist_ok=True)

    def save(part: dict) -> None:
        report.update({**(json.loads(path.read_text()) if path.exists() else {}), **part})  # another run's too
        path.write_text(json.dumps(report, indent=2) + "\n")
        (args.out / "encoder_speed.md").write_text(markdown(report))

    if not args.no_speed:
        save({"speed": speed(prompts, args.runs, args.cache), "measured_at": datetime.now(UTC).isoformat()})
    if args.quality:
        at = datetime.now(UTC).isoformat()
        quality(rows, args.sets.split(","), args.cache,
                lambda table: save({"quality": table, "quality_measured_at": at}))
    print(markdown(report))

if __name__ == "__main__":
    main()
