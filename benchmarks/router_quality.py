"""Router quality on held-out data: router x held-out set -> APGR, CPT(50%), CPT(80%), train time, scoring speed.

Held-out sets (never the training prompts; contaminated prompts dropped):
  mmlu-subjects   grouped 4-fold over whole MMLU subjects: train on 3/4 of the subjects, test on the rest
  mmlu->gsm8k     train on all of MMLU, test on GSM8K (another benchmark entirely)
  gsm8k-5fold     5-fold over GSM8K prompts
Each router uses its defaults (no tuning on a test split; what a router tunes, it tunes by grouped validation
inside its own training rows). bert's linear probe sees every training row and its fine-tuning at most
--bert-rows of them (a CPU budget, stated in the output); the others train on all rows.
Metrics are averaged over folds (each fold's router ranks its own held-out prompts, as a job ranks its own
batch); `APGR pooled` ranks all folds' scores together and is reported for reference only.

    python benchmarks/router_quality.py [--routers random,sw_ranking,mf,bert,causal_llm] [--bert-rows 2000]
Writes benchmarks/results/router_quality.{json,md} and one curves PNG per held-out set.
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
from routers.data import Outcome, outcome_to_preference, read_routellm_evals  # noqa: E402
from routers.evaluate import Curve, evaluate, mean_curve, summarize  # noqa: E402
from routers.plot import plot_curves  # noqa: E402
from routers.registry import train_router  # noqa: E402

DATA = Path(os.environ.get("ROUTEYARD_DATA", ROOT.parent / "shared" / "data")) / "routellm-evals"


def splits(rows: list[Outcome]) -> dict[str, list[tuple[list[Outcome], list[Outcome]]]]:
    mmlu = [r for r in rows if r.group.startswith("mmlu")]
    gsm = [r for r in rows if r.group == "gsm8k"]
    subjects = sorted({r.group for r in mmlu})
    order = np.random.default_rng(0).permutation(len(subjects))
    folds = [{subjects[i] for i in order[k::4]} for k in range(4)]
    gorder = np.random.default_rng(0).permutation(len(gsm))
    gfolds = [set(gorder[k::5].tolist()) for k in range(5)]
    return {
        "mmlu-subjects": [([r for r in mmlu if r.group not in f], [r for r in mmlu if r.group in f]) for f in folds],
        "mmlu->gsm8k": [(mmlu, gsm)],
        "gsm8k-5fold": [([r for i, r in enumerate(gsm) if i not in f], [r for i, r in enumerate(gsm) if i in f])
                        for f in gfolds],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--routers", default="random,sw_ranking,mf,bert,causal_llm")
    parser.add_argument("--bert-rows", type=int, default=2000, help="rows bert fine-tunes on (its probe sees all)")
    parser.add_argument("--bert-epochs", type=int, default=1)
    parser.add_argument("--sets", default="mmlu-subjects,mmlu->gsm8k,gsm8k-5fold")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "cache")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    runtime = RouterRuntime(device=args.device, cache_dir=args.cache, batch_size=64)
    rows = read_routellm_evals(DATA)
    names = args.routers.split(",")
    table: dict[str, dict[str, dict]] = {}
    for set_name, folds in splits(rows).items():
        if set_name not in args.sets.split(","):
            continue
        fold_curves: dict[str, list[Curve]] = {}
        pooled: dict[str, list[np.ndarray]] = {n: [] for n in names if n != "random"}
        train_s: dict[str, list[float]] = {n: [] for n in names}
        speed: dict[str, list[float]] = {n: [] for n in names}
        chosen: dict[str, list[dict]] = {n: [] for n in names}  # what each fold's router picked by validation
        tests: list[Outcome] = []
        for k, (train, test) in enumerate(folds):
            tests += test
            prefs = [outcome_to_preference(o) for o in train]
            scores: dict[str, np.ndarray] = {}
            for name in names:
                if name == "random":
                    continue
                opts = TrainOptions(seed=0)
                if name == "bert":
                    opts = TrainOptions(seed=0, epochs=args.bert_epochs, params={"finetune_rows": args.bert_rows})
                start = time.perf_counter()
                router = train_router(name, prefs, runtime, opts)
                train_s[name].append(time.perf_counter() - start)
                chosen[name].append({k: router.config[k] for k in ("layer", "target") if k in router.config})
                scores[name] = router.win_rate([o.prompt for o in test])
                pooled[name].append(scores[name])
                if k == 0:  # speed on prompts never seen (cold caches), as a new batch would be
                    fresh = [f"[{time.time_ns()}] {o.prompt}" for o in test[:300]]
                    start = time.perf_counter()
                    router.win_rate(fresh)
                    speed[name].append(len(fresh) / (time.perf_counter() - start))
                print(f"{set_name} fold {k} {name}: trained {train_s[name][-1]:.0f}s {chosen[name][-1]}", flush=True)
            _, curves = evaluate(scores, test)
            for name, c in curves.items():
                fold_curves.setdefault(name, []).append(c)
        # Headline: the mean over folds (each fold's router ranks its own held-out prompts, as a job does);
        # `apgr_pooled` ranks the scores of all folds' routers together, for reference (biased low, see
        # routers.evaluate.mean_curve).
        strong = float(np.mean([o.strong for o in tests]))
        weak = float(np.mean([o.weak for o in tests]))
        pooled_found, _ = evaluate({n: np.concatenate(s) for n, s in pooled.items()}, tests)
        mean_curves = {n: mean_curve(cs) for n, cs in fold_curves.items()}
        per_router: dict[str, dict] = {}
        for name in [*names, "oracle"]:
            m = summarize(mean_curves[name], len(tests), strong, weak).to_dict()
            m["apgr_folds"] = [float(np.trapezoid(c.pgr, c.fraction)) for c in fold_curves[name]]
            m["apgr_pooled"] = pooled_found[name].apgr
            m["train_s_median"] = statistics.median(train_s[name]) if train_s.get(name) else 0.0
            m["score_per_s_median"] = statistics.median(speed[name]) if speed.get(name) else None
            if any(chosen.get(name, [])):
                m["chosen_per_fold"] = chosen[name]
            per_router[name] = m
        table[set_name] = per_router
        plot_curves(mean_curves, strong, weak, args.out / f"router_quality_{set_name.replace('->', '_to_')}.png",
                    f"held out: {set_name} ({len(tests)} prompts, mean over {len(folds)} fold(s))")
        print(json.dumps({n: round(r["apgr"], 3) for n, r in per_router.items()}), flush=True)

    report = {"measured_at": datetime.now(UTC).isoformat(), "machine": f"{platform.machine()}, "
              f"{os.cpu_count()} cores", "device": runtime.device, "bert_finetune_rows": args.bert_rows,
              "bert_epochs": args.bert_epochs, "results": table}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "router_quality.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| held-out set | router | APGR (mean of folds) | APGR pooled | CPT(50%) | CPT(80%) | "
             "train s (median/fold) | scoring prompts/s |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for set_name, per_router in table.items():
        for name, r in per_router.items():
            sp = r.get("score_per_s_median")
            lines.append(f"| {set_name} | {name} | {r['apgr']:.3f} | {r['apgr_pooled']:.3f} | {r['cpt50']:.1%} | "
                         f"{r['cpt80']:.1%} | {r.get('train_s_median', 0):.0f} | {'-' if not sp else f'{sp:.0f}'} |")
    (args.out / "router_quality.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
