"""Tried, not kept: the user's rows alone as one more candidate of the domain correction's choice.

routers/linear.py chooses how far a user's rows move the base heads by 5-fold held-out cross-entropy over
those rows: no correction, or a correction at each C of its grid. Here the router trained on the user's rows
alone (at each C of C_GRID, and 1e-3) joins the candidates, chosen by the same cross-entropy; everything else
is benchmarks/router_learning_draws.py's (the same draws, test rows and user rows), so each draw pairs with
that benchmark's draw. Like it, this needs numpy and scipy only and runs on many cores:

    python benchmarks/router_learning_alone.py run 40 DIR/alone.jsonl
    python benchmarks/router_learning_alone.py report DIR/alone.jsonl   # pairs with router_learning_draws.jsonl
Writes benchmarks/results/router_learning_alone.{jsonl,md}.
"""

import json
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import benchmarks.router_learning_draws as B  # noqa: E402


def one(task: tuple[str, int, int]) -> dict:
    domain, draw, n = task
    x, q = B.D[f"{domain}/x"].astype(np.float64), B.D[f"{domain}/q"]
    h = (B.D[f"{domain}/mean"], B.D[f"{domain}/scale"], B.D[f"{domain}/w"], B.D[f"{domain}/b"])
    order = np.random.default_rng(draw).permutation(len(x))
    test, user = order[:B.TEST_ROWS], order[B.TEST_ROWS:][:n]
    xt, qt, xu, qu = x[test], q[test], x[user], q[user]
    assign = np.random.default_rng(draw).permutation(n) % 5
    ent = {}
    for c in (None, *B.CORRECTION_GRID):
        losses = []
        for k in range(5):
            held, train = assign == k, assign != k
            fitted = h if c is None else B.corrected(h, xu[train], qu[train], c)
            losses.append(B.cross_entropy(fitted, xu[held], qu[held]))
        ent["none" if c is None else f"{c:g}"] = float(np.mean(losses))
    for c in (*B.C_GRID, 1e-3):
        losses = []
        for k in range(5):
            held, train = assign == k, assign != k
            losses.append(B.cross_entropy(B.alone(xu[train], qu[train], c), xu[held], qu[held]))
        ent[f"alone {c:g}"] = float(np.mean(losses))
    best = min(ent, key=lambda k: ent[k])
    chosen = "none" if best == f"{B.CORRECTION_GRID[0]:g}" else best
    if chosen == "none":
        s = B.score(h, xt)
    elif chosen.startswith("alone"):
        s = B.score(B.alone(xu, qu, float(chosen.split()[1])), xt)
    else:
        s = B.score(B.corrected(h, xu, qu, float(chosen)), xt)
    return {"domain": domain, "draw": draw, "n": n, "with alone": B.apgr(s, qt)[0], "chosen_alone": chosen,
            "cross_entropy_alone": ent}


def run(draws: int, out: Path) -> None:
    B.D.update(np.load(B.PACK))  # whole, before forking (router_learning_draws.run says why)
    tasks = [(d, k, n) for k in range(draws) for n in B.SIZES for d in B.DOMAINS]
    start = time.perf_counter()
    with Pool(os.cpu_count()) as pool, out.open("w") as f:
        for rec in pool.imap_unordered(one, tasks):
            f.write(json.dumps(rec) + "\n")
    print(f"{len(tasks)} fits in {time.perf_counter() - start:.0f}s")


def report(path: Path) -> None:
    base = {(r["domain"], r["draw"], r["n"]): r for r in map(json.loads, (RESULTS / "router_learning_draws.jsonl")
                                                                  .read_text().splitlines())}
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    lines = ["# The user's rows alone as a candidate of the correction (tried, not kept)", "",
             f"{len({r['draw'] for r in recs})} draws of benchmarks/router_learning_draws.py, paired draw by draw; "
             "mean APGR on 300 test prompts, the paired difference's mean +/- standard error.", "",
             "| new domain | n | with alone | base+user (kept) | user only | with alone - base+user | "
             "alone chosen |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for domain in B.DOMAINS:
        for n in B.SIZES:
            rs = [r for r in recs if r["domain"] == domain and r["n"] == n]
            a = np.array([r["with alone"] for r in rs])
            kept = np.array([base[(domain, r["draw"], n)]["base+user"] for r in rs])
            user = np.array([base[(domain, r["draw"], n)]["user only"] for r in rs])
            diff = a - kept
            share = np.mean([r["chosen_alone"].startswith("alone") for r in rs])
            lines.append(f"| {domain} | {n} | {a.mean():.3f} | {kept.mean():.3f} | {user.mean():.3f} | "
                         f"{diff.mean():+.4f} +/- {diff.std() / np.sqrt(len(diff)):.4f} | {share:.0%} |")
    (RESULTS / "router_learning_alone.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


RESULTS = ROOT / "benchmarks" / "results"

if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        report(Path(sys.argv[2]))
