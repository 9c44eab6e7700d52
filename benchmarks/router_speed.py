"""Cold-prompt scoring speed of the shipped routers, side by side: prompts/s, median of interleaved runs.

Every run scores prompts no cache has seen (a fresh prefix), in one batch, as a new job's scoring step does.

    python benchmarks/router_speed.py [--routers linear,mf,random] [--prompts 300] [--runs 5]
Writes benchmarks/results/router_speed.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from routers.base import RouterRuntime  # noqa: E402
from routers.data import read_routellm_evals  # noqa: E402
from routers.registry import load_router  # noqa: E402

DATA = Path(os.environ.get("ROUTEYARD_DATA", ROOT.parent / "shared" / "data")) / "routellm-evals"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--routers", default="linear,mf,random")
    parser.add_argument("--prompts", type=int, default=300)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    rows = read_routellm_evals(DATA)
    prompts = [r.prompt for r in rows[:: max(1, len(rows) // args.prompts)]][: args.prompts]
    runtime = RouterRuntime(device="cpu")  # no cache: cold prompts
    routers = {name: load_router(name, runtime).router for name in args.routers.split(",")}
    for router in routers.values():
        router.win_rate(["warm up the model"])
    speeds: dict[str, list[float]] = {name: [] for name in routers}
    for run in range(args.runs):
        for name, router in routers.items():  # interleaved, so load on the machine hits every router alike
            fresh = [f"[{run}:{name}] {p}" for p in prompts]
            start = time.perf_counter()
            router.win_rate(fresh)
            speeds[name].append(len(fresh) / (time.perf_counter() - start))
    report = {"measured_at": datetime.now(UTC).isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "prompts": len(prompts), "runs": args.runs,
              "prompts_per_s": {n: {"median": statistics.median(v), "runs": v} for n, v in speeds.items()}}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "router_speed.json").write_text(json.dumps(report, indent=2) + "\n")
    base = statistics.median(speeds[next(iter(speeds))])
    lines = ["| router | prompts/s (median) | vs " + next(iter(speeds)) + " |", "| --- | --- | --- |"]
    lines += [f"| {n} | {statistics.median(v):.1f} | {statistics.median(v) / base:.2f}x |" for n, v in speeds.items()]
    (args.out / "router_speed.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
