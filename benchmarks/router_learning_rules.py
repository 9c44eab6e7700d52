"""Other ways to choose the domain correction, tried on the draws of benchmarks/router_learning_draws.py.

routers/linear.py chooses how far a user's rows move the base heads by 5-fold held-out cross-entropy over
those rows, among no correction and a correction at each C of its grid (1e-5 to 1e-2). For each draw of
router_learning_draws.py (the same test and user rows, so every rule pairs draw by draw with its base+user),
this records, per candidate, the 5-fold held-out cross-entropy, the squared error of the predicted
strong-minus-weak quality and the test APGR when fitted on all the user's rows, over a finer grid (3e-5 and
3e-4 added); and the rule that also lets the user's rows alone (at each C of C_GRID, and 1e-3) compete on
cross-entropy. `report` scores each rule. numpy and scipy only, for a machine with many cores:

    python benchmarks/router_learning_rules.py run 40 DIR/rules.jsonl
    python benchmarks/router_learning_rules.py report DIR/rules.jsonl   # pairs with router_learning_draws.jsonl
Writes benchmarks/results/router_learning_rules.md (report).
"""

from __future__ import annotations

import json
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import benchmarks.router_learning_draws as B  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results"
GRID = (1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 1e-2)  # the product's CORRECTION_GRID with 3e-5 and 3e-4 added
ALONE_GRID = (*B.C_GRID, 1e-3)


def delta_mse(h: B.Heads, x: np.ndarray, q: np.ndarray) -> float:
    p = expit(B.logits(h, x))
    return float(np.mean(((q[:, 0] - q[:, 1]) - (p[:, 0] - p[:, 1])) ** 2))


def draw_rows(domain: str, draw: int, n: int) -> tuple[Any, ...]:
    """The base heads, test rows, user rows and fold assignment of router_learning_draws.one_draw."""
    x, q = B.D[f"{domain}/x"].astype(np.float64), B.D[f"{domain}/q"]
    h: B.Heads = (B.D[f"{domain}/mean"], B.D[f"{domain}/scale"], B.D[f"{domain}/w"], B.D[f"{domain}/b"])
    order = np.random.default_rng(draw).permutation(len(x))
    test, user = order[: B.TEST_ROWS], order[B.TEST_ROWS :][:n]
    return h, x[test], q[test], x[user], q[user], np.random.default_rng(draw).permutation(n) % 5


def candidates(task: tuple[str, int, int]) -> dict:
    """Every correction strength of GRID (and none): held-out cross-entropy, squared error, test APGR."""
    h, xt, qt, xu, qu, assign = draw_rows(*task)
    out = {}
    for c in (None, *GRID):
        ce, mse, fold_apgr = [], [], []
        for k in range(5):
            held, train = assign == k, assign != k
            fitted = h if c is None else B.corrected(h, xu[train], qu[train], c)
            ce.append(B.cross_entropy(fitted, xu[held], qu[held]))
            mse.append(delta_mse(fitted, xu[held], qu[held]))
            fold_apgr.append(B.apgr(B.score(fitted, xu[held]), qu[held]))
        full = h if c is None else B.corrected(h, xu, qu, c)
        out["none" if c is None else f"{c:g}"] = {"ce": float(np.mean(ce)), "mse": float(np.mean(mse)),
                                                  "fold_apgr": B.span_weighted(fold_apgr),
                                                  "test": B.apgr(B.score(full, xt), qt)[0]}
    return {"candidates": out}


def with_alone(task: tuple[str, int, int]) -> dict:
    """The product's rule with the user's rows alone (at each C of ALONE_GRID) among its candidates."""
    h, xt, qt, xu, qu, assign = draw_rows(*task)
    ent = {}
    for c in (None, *B.CORRECTION_GRID):
        losses = []
        for k in range(5):
            held, train = assign == k, assign != k
            fitted = h if c is None else B.corrected(h, xu[train], qu[train], c)
            losses.append(B.cross_entropy(fitted, xu[held], qu[held]))
        ent["none" if c is None else f"{c:g}"] = float(np.mean(losses))
    for c in ALONE_GRID:
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
    return {"with alone": B.apgr(s, qt)[0], "chosen_alone": chosen, "cross_entropy_alone": ent}


def one(task: tuple[str, int, int]) -> dict:
    domain, draw, n = task
    return {"domain": domain, "draw": draw, "n": n, **candidates(task), **with_alone(task)}


def run(draws: int, out: Path) -> None:
    B.D.update(np.load(B.PACK))  # whole, before forking (router_learning_draws.run says why)
    tasks = [(d, k, n) for k in range(draws) for n in B.SIZES for d in B.DOMAINS]
    start = time.perf_counter()
    with Pool(os.cpu_count(), initializer=B.one_blas_thread) as pool, out.open("w") as f:
        for rec in pool.imap_unordered(one, tasks):
            f.write(json.dumps(rec) + "\n")
    print(f"{len(tasks)} draws in {time.perf_counter() - start:.0f}s")


def pick(cands: dict, grid: tuple[str, ...], criterion: str) -> str:
    """The candidate a rule chooses: lowest criterion; the weakest correction counts as none (as the product)."""
    best = min(grid, key=lambda k: cands[k][criterion])
    return "none" if best == f"{GRID[0]:g}" else best


PRODUCT = ("none", *(f"{c:g}" for c in B.CORRECTION_GRID))
RULES = {"finer grid (3e-5, 3e-4 added), cross-entropy": lambda r: r["candidates"][pick(
             r["candidates"], ("none", *(f"{c:g}" for c in GRID)), "ce")]["test"],
         "product grid, squared error of strong - weak": lambda r: r["candidates"][pick(
             r["candidates"], PRODUCT, "mse")]["test"],
         "user's rows alone also candidates, cross-entropy": lambda r: r["with alone"]}


def report(path: Path) -> None:
    draws = {(r["domain"], r["draw"], r["n"]): r for r in map(json.loads, (RESULTS / "router_learning_draws.jsonl")
                                                                   .read_text().splitlines())}
    for r in draws.values():  # these rules choose the correction; since session 17 the product also averages it
        r["base+user"] = r.get("correction alone", r["base+user"])  # with a fit on the user's rows alone
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    product = [r["candidates"][pick(r["candidates"], PRODUCT, "ce")]["test"]
               - draws[(r["domain"], r["draw"], r["n"])]["base+user"] for r in recs]
    assert max(map(abs, product)) < 1e-9, "these draws are not router_learning_draws.jsonl's"
    lines = ["# Other ways to choose the domain correction (tried, not kept)", "",
             f"{len({r['draw'] for r in recs})} draws of benchmarks/router_learning_draws.py, the same draws "
             "(router_learning_draws.jsonl), paired: mean test APGR, and the mean difference to the product's "
             "rule (base+user) +/- its standard error.", "",
             "| rule | " + " | ".join(f"{d} n={n}" for d in B.DOMAINS for n in B.SIZES) + " |",
             "|" + " --- |" * (1 + len(B.DOMAINS) * len(B.SIZES))]

    table: dict[str, dict[tuple[str, int], str]] = {}
    for name in ("base+user (the product)", "user only", *RULES):
        table[name] = {}
        for d in B.DOMAINS:
            for n in B.SIZES:
                rs = [r for r in recs if r["domain"] == d and r["n"] == n]
                kept = np.array([draws[(d, r["draw"], n)]["base+user"] for r in rs])
                if name in RULES:
                    v = np.array([RULES[name](r) for r in rs])
                else:
                    v = np.array([draws[(d, r["draw"], n)][name.split(" (")[0]] for r in rs])
                diff = v - kept
                table[name][(d, n)] = (f"{v.mean():.3f}" if name.startswith("base+user") else
                                       f"{v.mean():.3f} ({diff.mean():+.4f} +/- {diff.std() / np.sqrt(len(diff)):.4f})")
        lines.append(f"| {name} | " + " | ".join(table[name][(d, n)] for d in B.DOMAINS for n in B.SIZES) + " |")
    (RESULTS / "router_learning_rules.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    if sys.argv[1] == "run":
        run(int(sys.argv[2]), Path(sys.argv[3]))
    else:
        report(Path(sys.argv[2]))
