"""Router quality on held-out data, every router beside the baselines (random, length, probe).

Protocols: benchmarks/protocols.py. The headline is the mean APGR over the three unlike-data protocols
(mmlu->gsm8k, gsm8k->mmlu, mmlu-domains); each router's margin over `probe` is shown per protocol. Each
router trains with its defaults (what it tunes, it tunes by validation inside its own training rows); bert's
linear probe sees every training row and its fine-tuning at most --bert-rows of them (a CPU budget).
Metrics are averaged over folds (each fold's router ranks its own held-out prompts, as a job ranks its batch).

    python benchmarks/router_quality.py [--routers linear,mf,sw_ranking,bert,causal_llm] [--sets ...]
Writes benchmarks/results/router_quality.{json,md} and one curves PNG per protocol. --merge keeps the rows of
routers not run this time (e.g. a slow router measured in an earlier run), marked with their run date.
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
from benchmarks.baselines import BASELINES, train_baseline  # noqa: E402
from benchmarks.protocols import IN_DISTRIBUTION, UNLIKE, protocols  # noqa: E402
from routers.base import RouterRuntime, TrainOptions  # noqa: E402
from routers.data import Outcome, outcome_to_preference, read_routellm_evals  # noqa: E402
from routers.evaluate import Curve, evaluate, mean_curve, summarize  # noqa: E402
from routers.plot import plot_curves  # noqa: E402
from routers.registry import DEFAULT_ROUTER, train_router  # noqa: E402

DATA = Path(os.environ.get("ROUTEYARD_DATA", ROOT.parent / "shared" / "data")) / "routellm-evals"
ALL_ROUTERS = "linear,sw_ranking,mf,bert,causal_llm"


def _options(name: str, args: argparse.Namespace) -> TrainOptions:
    if name == "bert":
        return TrainOptions(seed=0, epochs=args.bert_epochs, params={"finetune_rows": args.bert_rows})
    return TrainOptions(seed=0)


def run_protocol(folds: list[tuple[list[Outcome], list[Outcome]]], names: list[str], runtime: RouterRuntime,
                 args: argparse.Namespace, label: str) -> tuple[dict[str, dict], dict[str, Curve], list[Outcome]]:
    fold_curves: dict[str, list[Curve]] = {}
    train_s: dict[str, list[float]] = {n: [] for n in names}
    speed: dict[str, list[float]] = {n: [] for n in names}
    chosen: dict[str, list[dict]] = {n: [] for n in names}  # what each fold's router picked by validation
    tests: list[Outcome] = []
    for k, (train, test) in enumerate(folds):
        tests += test
        prefs = [outcome_to_preference(o) for o in train]
        scores: dict[str, np.ndarray] = {}
        for name in names:
            start = time.perf_counter()
            model = (train_baseline(name, prefs, runtime) if name in BASELINES
                     else train_router(name, prefs, runtime, _options(name, args)))
            train_s[name].append(time.perf_counter() - start)
            config = getattr(model, "config", {})
            config = config if isinstance(config, dict) else vars(config)  # bert: a config dataclass
            chosen[name].append({key: config[key] for key in ("layer", "target", "l2", "c") if key in config})
            scores[name] = model.win_rate([o.prompt for o in test])
            if k == 0 and name != "length":  # speed on prompts never seen (cold caches), as a new batch would be
                fresh = [f"[{time.time_ns()}] {o.prompt}" for o in test[:300]]
                start = time.perf_counter()
                model.win_rate(fresh)
                speed[name].append(len(fresh) / (time.perf_counter() - start))
            print(f"{label} fold {k} {name}: trained {train_s[name][-1]:.0f}s {chosen[name][-1]}", flush=True)
        _, curves = evaluate(scores, test)
        for name, c in curves.items():
            fold_curves.setdefault(name, []).append(c)
    strong = float(np.mean([o.strong for o in tests]))
    weak = float(np.mean([o.weak for o in tests]))
    mean_curves = {n: mean_curve(cs) for n, cs in fold_curves.items()}
    per_router: dict[str, dict] = {}
    for name in ["random", *names, "oracle"]:
        m = summarize(mean_curves[name], len(tests), strong, weak).to_dict()
        m["apgr_folds"] = [float(np.trapezoid(c.pgr, c.fraction)) for c in fold_curves[name]]
        m["train_s_median"] = statistics.median(train_s[name]) if train_s.get(name) else 0.0
        m["score_per_s_median"] = statistics.median(speed[name]) if speed.get(name) else None
        if any(chosen.get(name, [])):
            m["chosen_per_fold"] = chosen[name]
        per_router[name] = m
    return per_router, mean_curves, tests


def _markdown(table: dict[str, dict[str, dict]], order: list[str]) -> str:
    """One row per router: APGR per protocol (margin over probe), the unlike mean and the worst margin, speed.
    A protocol a router was not run on shows '-' (and then no mean)."""
    sets = [s for s in (*UNLIKE, *IN_DISTRIBUTION) if s in table]
    unlike = [s for s in UNLIKE if s in table]
    head = ["router", *sets, "mean of unlike", "vs probe: mean (worst)", "train s", "prompts/s"]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name in order:
        ran = [s for s in sets if name in table[s]]
        if not ran:
            continue
        cells = [f"**{name}**" if name == DEFAULT_ROUTER else name]
        for s in sets:
            r, probe = table[s].get(name), table[s].get("probe")
            if r is None:
                cells.append("-")
                continue
            margin = f" ({r['apgr'] - probe['apgr']:+.3f})" if probe and name not in ("probe", "oracle") else ""
            cells.append(f"{r['apgr']:.3f}{margin}")
        complete = unlike and all(name in table[s] for s in unlike)
        cells.append(f"{np.mean([table[s][name]['apgr'] for s in unlike]):.3f}" if complete else "-")
        if complete and all("probe" in table[s] for s in unlike) and name not in ("probe", "oracle"):
            margins = [table[s][name]["apgr"] - table[s]["probe"]["apgr"] for s in unlike]
            cells.append(f"{np.mean(margins):+.3f} ({min(margins):+.3f})")
        else:
            cells.append("-")
        trains = [table[s][name].get("train_s_median", 0) for s in ran]
        speeds = [table[s][name]["score_per_s_median"] for s in ran if table[s][name].get("score_per_s_median")]
        cells.append(f"{statistics.median(trains):.0f}")
        cells.append(f"{statistics.median(speeds):.0f}" if speeds else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def render(out: Path) -> str:
    """Rewrite router_quality.md from router_quality.json (e.g. after merging rows of an earlier run)."""
    table = json.loads((out / "router_quality.json").read_text())["results"]
    order = ["random", *BASELINES, *ALL_ROUTERS.split(","), "oracle"]
    order += sorted({n for s in table.values() for n in s} - set(order))
    md = _markdown(table, order)
    (out / "router_quality.md").write_text(md)
    return md


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--routers", default=ALL_ROUTERS, help="registry names; baselines are always added")
    parser.add_argument("--bert-rows", type=int, default=2000, help="rows bert fine-tunes on (its probe sees all)")
    parser.add_argument("--bert-epochs", type=int, default=1)
    parser.add_argument("--sets", default=",".join((*UNLIKE, *IN_DISTRIBUTION)))
    parser.add_argument("--merge", action="store_true", help="keep earlier results of routers not run now")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "cache")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    runtime = RouterRuntime(device=args.device, cache_dir=args.cache, batch_size=64)
    rows = read_routellm_evals(DATA)
    names = [*BASELINES, *[n for n in args.routers.split(",") if n and n not in BASELINES and n != "random"]]
    report_path = args.out / "router_quality.json"
    earlier = json.loads(report_path.read_text())["results"] if args.merge and report_path.exists() else {}
    measured_at = datetime.now(UTC).isoformat()
    table: dict[str, dict[str, dict]] = {name: dict(routers) for name, routers in earlier.items()}
    for set_name, folds in protocols(rows, args.sets.split(",")).items():
        per_router, curves, tests = run_protocol(folds, names, runtime, args, set_name)
        for r in per_router.values():
            r["measured_at"] = measured_at
        table[set_name] = {**table.get(set_name, {}), **per_router}
        strong, weak = float(np.mean([o.strong for o in tests])), float(np.mean([o.weak for o in tests]))
        plot_curves(curves, strong, weak, args.out / f"router_quality_{set_name.replace('->', '_to_')}.png",
                    f"held out: {set_name} ({len(tests)} prompts, mean over {len(folds)} fold(s))")
        print(json.dumps({n: round(r["apgr"], 3) for n, r in per_router.items()}), flush=True)
    report = {"measured_at": measured_at, "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "device": runtime.device, "bert_finetune_rows": args.bert_rows, "bert_epochs": args.bert_epochs,
              "unlike_protocols": list(UNLIKE), "results": table}
    args.out.mkdir(parents=True, exist_ok=True)
    report_path.write_text(json.dumps(report, indent=2) + "\n")
    print(render(args.out))


if __name__ == "__main__":
    main()
