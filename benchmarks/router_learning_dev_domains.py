"""The domain correction on new domains *like* the base data: held-out MMLU domain clusters (humanities, social
sciences, other) as the user's traffic, n = 300 of their rows, the rest of MMLU and GSM8K as the base.

benchmarks/router_learning_draws.py measures the correction where the base router is weak (GSM8K, STEM: base
APGR 0.60 and 0.50). This asks the other question a user's feedback raises: does the correction leave a base
router that already ranks a domain well no worse? Kept apart from the reported domains, so any new correction
rule can be chosen here and reported there. For each draw (as router_learning_draws.py draws), the user's rows
fit, and 5-fold held-out cross-entropy chooses among, no correction and the product's correction
(routers/linear.py) at each strength of its grid ("full"), and the same correction confined to the top k
principal directions of the user's rows (k = 8, 32, 128; an experiment, not the product).

    python benchmarks/router_learning_dev_domains.py pack              # -> benchmarks/cache/learning_dev.npz
    python benchmarks/router_learning_dev_domains.py run DRAWS OUT.jsonl
    python benchmarks/router_learning_dev_domains.py report OUT.jsonl  # -> results/router_learning_dev_domains.md
"""

from __future__ import annotations

import json
import sys
import time
from collections import defaultdict
from multiprocessing import Pool
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import benchmarks.router_learning_draws as B  # noqa: E402

PACK = ROOT / "benchmarks" / "cache" / "learning_dev.npz"
DOMAINS = ("mmlu-humanities", "mmlu-social", "mmlu-other")
N = 300
GRID = B.CORRECTION_GRID
KS = (8, 32, 128)
_SVD: dict[tuple, np.ndarray] = {}


def correction(family: str, z: np.ndarray, offset: np.ndarray, q: np.ndarray, c: float
               ) -> tuple[np.ndarray, np.ndarray]:
    """(v (2, d), b (2,)) added to the base heads: fitted on all of z ("full"), or on its top k principal
    directions ("pcaK"), mapped back to the features, so the corrected router is one linear model either way."""
    basis = None
    if family != "full":
        key = (z.shape, float(z[:3].sum()))
        if key not in _SVD:
            if len(_SVD) > 8:
                _SVD.clear()
            _SVD[key] = np.linalg.svd(z - z.mean(0), full_matrices=False)[2]
        basis = _SVD[key][: int(family[3:])].T
    u = z if basis is None else z @ basis
    fits = [B.fit_residual(u, offset[:, j], q[:, j], c) for j in (0, 1)]
    v = np.stack([f[0] if basis is None else basis @ f[0] for f in fits])
    return v, np.array([f[1] for f in fits])


def _ce(logit: np.ndarray, q: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, logit) - q * logit))


def _score(logit: np.ndarray) -> np.ndarray:
    p = 1 / (1 + np.exp(-logit))
    return 0.5 * (1 + p[:, 0] - p[:, 1])


def one(task: tuple[str, int]) -> dict:
    domain, draw = task
    x, q = B.D[f"{domain}/x"].astype(np.float64), B.D[f"{domain}/q"]
    mean, scale, w, b = (B.D[f"{domain}/{k}"] for k in ("mean", "scale", "w", "b"))
    order = np.random.default_rng(draw).permutation(len(x))
    test, user = order[: B.TEST_ROWS], order[B.TEST_ROWS :][:N]
    zt, qt, zu, qu = (x[test] - mean) / scale, q[test], (x[user] - mean) / scale, q[user]
    bt, bu = zt @ w.T + b, zu @ w.T + b
    assign = np.random.default_rng(draw).permutation(N) % 5
    cv = {"none": float(np.mean([_ce(bu[assign == k], qu[assign == k]) for k in range(5)]))}
    tests = {"none": B.apgr(_score(bt), qt)[0]}
    for family in ("full", *(f"pca{k}" for k in KS)):
        for c in GRID:
            losses = []
            for k in range(5):
                held, train = assign == k, assign != k
                v, bb = correction(family, zu[train], bu[train], qu[train], c)
                losses.append(_ce(bu[held] + zu[held] @ v.T + bb, qu[held]))
            v, bb = correction(family, zu, bu, qu, c)
            cv[f"{family}:{c:g}"] = float(np.mean(losses))
            tests[f"{family}:{c:g}"] = B.apgr(_score(bt + zt @ v.T + bb), qt)[0]
    return {"domain": domain, "draw": draw, "n": N, "cv": cv, "test": tests}


def chosen(rec: dict, families: tuple[str, ...]) -> str:
    """The candidate 5-fold cross-entropy picks; the product's rule keeps the base heads when none, or the
    weakest full correction (mostly the base rate), fits best."""
    cv = {k: v for k, v in rec["cv"].items() if k == "none" or k.split(":")[0] in families}
    best = min(cv, key=lambda k: cv[k])
    return "none" if best == f"full:{GRID[0]:g}" else best


def report(path: Path) -> str:
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    by: dict[str, list[dict]] = defaultdict(list)
    for r in recs:
        by[r["domain"]].append(r)
    rules = {"product (full)": ("full",), "pca8": ("pca8",), "pca32": ("pca32",), "pca128": ("pca128",),
             "any of them": ("full", "pca8", "pca32", "pca128")}
    lines = [f"# The correction on new domains like the base data (n = {N} user rows)", "",
             f"{len({r['draw'] for r in recs})} draws a domain, {B.TEST_ROWS} test rows each; mean test APGR, and "
             "the change against the base router on the same draws.", "",
             "| new domain | base only | " + " | ".join(rules) + " |", "|---|---:|" + "---:|" * len(rules)]
    for domain, rs in sorted(by.items()):
        base = np.array([r["test"]["none"] for r in rs])
        cells = []
        for families in rules.values():
            v = np.array([r["test"][chosen(r, families)] for r in rs])
            cells.append(f"{v.mean():.3f} ({v.mean() - base.mean():+.3f})")
        lines.append(f"| {domain} | {base.mean():.3f} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main() -> None:
    step = sys.argv[1]
    if step == "pack":
        B.DOMAINS, B.PACK = DOMAINS, PACK
        B.pack()
    elif step == "run":
        draws, out = int(sys.argv[2]), Path(sys.argv[3])
        B.D.update(np.load(PACK))
        tasks = [(d, k) for k in range(draws) for d in DOMAINS]
        start = time.perf_counter()
        with Pool(initializer=B.one_blas_thread) as pool, out.open("w") as f:
            for rec in pool.imap_unordered(one, tasks):
                f.write(json.dumps(rec) + "\n")
        print(f"{len(tasks)} draws in {time.perf_counter() - start:.0f}s")
    else:
        text = report(Path(sys.argv[2]))
        (ROOT / "benchmarks" / "results" / "router_learning_dev_domains.md").write_text(text)
        print(text)


if __name__ == "__main__":
    main()
