"""The learning curve of the default router over many draws: how steady is what the user's rows buy?

benchmarks/router_learning.py runs the product path (`train_router` with `focus_groups`) and refits the base
heads for every draw and n, about 10 minutes a draw on this CPU, so it runs few draws. APGR on 300 test prompts
moves by a few hundredths from one draw to the next, too much for three draws to settle a difference of 0.03.
This script runs the same mechanism on 40 draws:
  pack   (here, with the ML stack) embeds the rows (the embedding cache), fits the base heads once per domain
         exactly as `LinearRouter.train` does (C by grouped validation, seed 0), and writes the features of the
         new domain's rows and the base heads to benchmarks/cache/learning_draws.npz
  run    (numpy + scipy only, so it runs on any machine with many cores) for each draw (test rows and user rows
         drawn as router_learning.py draws them) and n: the base heads, the correction of routers/linear.py at
         each strength of its grid, the correction that rule chooses (held-out cross-entropy over 5 folds of the
         user's rows; the base heads when only the base rate fits) alone ("correction alone") and averaged with
         heads on the user's rows alone at LinearConfig.own_c ("base+user", what the product does), and the
         user's rows alone (C by 5-fold held-out APGR, as `choose_c` does)
  report (here) benchmarks/results/router_learning_draws.{json,md,png}: mean +/- sd over draws, and how often
         each router falls below the base router on the same draw
The corrections are the functions of routers/linear.py written out in numpy (the device has no ML stack); its
base+user draw 0 reproduces router_learning.py to the third decimal (n=100: 0.480 with C 1e-3, base 0.585).

    python benchmarks/router_learning_draws.py pack
    python benchmarks/router_learning_draws.py run --draws 40 --out DIR      # DIR/draws.jsonl
    python benchmarks/router_learning_draws.py report DIR/draws.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from scipy.optimize import minimize
from scipy.special import expit

ROOT = Path(__file__).resolve().parent.parent
PACK = ROOT / "benchmarks" / "cache" / "learning_draws.npz"
DOMAINS = ("gsm8k", "mmlu-stem")
SIZES = (100, 300, 1000)
TEST_ROWS = 300
CORRECTION_GRID = (1e-5, 1e-4, 1e-3, 1e-2)  # routers/linear.py
C_GRID = (1e-5, 3e-5, 1e-4, 3e-4)  # routers/linear.py
D: dict[str, np.ndarray] = {}


def pack() -> None:
    sys.path.insert(0, str(ROOT))
    from benchmarks.router_learning import DATA, split
    from routers.base import RouterRuntime, embedder_for
    from routers.data import outcome_to_preference, read_routellm_evals
    from routers.embeddings import DEFAULT_ENCODER
    from routers.linear import choose_c, fit_heads, qualities

    rows = read_routellm_evals(DATA)
    embedder = embedder_for(DEFAULT_ENCODER, RouterRuntime(device="cpu", cache_dir=ROOT / "benchmarks" / "cache"),
                            layers=True)
    out = {}
    for domain in DOMAINS:
        base, new = split(rows, domain)
        xb = embedder.embed([r.prompt for r in base]).astype(np.float64)
        qb = qualities([outcome_to_preference(r) for r in base])
        c, _ = choose_c(xb, qb, [r.group for r in base], seed=0)
        heads = fit_heads(xb, qb, c)
        out[f"{domain}/x"] = embedder.embed([r.prompt for r in new]).astype(np.float32)
        out[f"{domain}/q"] = np.array([(r.strong, r.weak) for r in new], dtype=np.float64)
        out[f"{domain}/mean"], out[f"{domain}/scale"] = heads.mean, heads.scale
        out[f"{domain}/w"], out[f"{domain}/b"] = heads.w[0], heads.b[0]  # the base heads: one member
        print(f"{domain}: base C {c:g}, {len(new)} new-domain rows", flush=True)
    PACK.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(PACK, **out)


def fit_residual(z: np.ndarray, offset: np.ndarray, q: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """routers/linear.py:_fit_correction (offset 0 and standardised z: scikit-learn's soft-label logistic head)."""
    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        v, b = theta[:-1], theta[-1]
        logit = offset + z @ v + b
        residual = c * (expit(logit) - q)
        value = c * float(np.sum(np.logaddexp(0.0, logit) - q * logit)) + 0.5 * float(v @ v)
        return value, np.concatenate([z.T @ residual + v, [residual.sum()]])

    theta = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 500}).x
    return theta[:-1], float(theta[-1])


Heads = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]  # mean, scale, w (2, d), b (2,)


def logits(h: Heads, x: np.ndarray) -> np.ndarray:
    return ((x - h[0]) / h[1]) @ h[2].T + h[3]


def score(h: Heads, x: np.ndarray) -> np.ndarray:
    p = expit(logits(h, x))
    return 0.5 * (1.0 + p[:, 0] - p[:, 1])


def corrected(h: Heads, x: np.ndarray, q: np.ndarray, c: float) -> Heads:
    z = (x - h[0]) / h[1]
    base = z @ h[2].T + h[3]
    fits = [fit_residual(z, base[:, k], q[:, k], c) for k in (0, 1)]
    return h[0], h[1], h[2] + np.stack([v for v, _ in fits]), h[3] + np.array([b for _, b in fits])


def alone(x: np.ndarray, q: np.ndarray, c: float) -> Heads:
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    fits = [fit_residual(z, np.zeros(len(x)), q[:, k], c) for k in (0, 1)]
    return mean, scale, np.stack([v for v, _ in fits]), np.array([b for _, b in fits])


OWN_C = 1e-4  # routers/linear.py LinearConfig.own_c


def averaged_score(members: list[Heads], x: np.ndarray) -> np.ndarray:
    """routers/linear.py Heads.score with several members: their probabilities averaged."""
    p = np.mean([expit(logits(h, x)) for h in members], axis=0)
    return 0.5 * (1.0 + p[:, 0] - p[:, 1])


def apgr(s: np.ndarray, q: np.ndarray) -> tuple[float, float]:
    """routers/linear.py:heldout_apgr: (APGR, strong - weak mean quality)."""
    n = len(s)
    order = np.lexsort((np.arange(n), -s))
    quality = (q[:, 1].sum() + np.concatenate([[0.0], np.cumsum((q[:, 0] - q[:, 1])[order])])) / n
    span = float(q[:, 0].mean() - q[:, 1].mean())
    pgr = (quality - q[:, 1].mean()) / span if span > 0 else np.zeros_like(quality)
    return float(np.trapezoid(pgr, np.arange(n + 1) / n)), span


def span_weighted(results: list[tuple[float, float]]) -> float:
    kept = [(a, s) for a, s in results if s > 0]
    return float(np.average([a for a, _ in kept], weights=[s for _, s in kept])) if kept else 0.0


def cross_entropy(h: Heads, x: np.ndarray, q: np.ndarray) -> float:
    logit = logits(h, x)
    return float(np.mean(np.logaddexp(0.0, logit) - q * logit))


def one_draw(task: tuple[str, int, int]) -> dict:
    domain, draw, n = task
    x, q = D[f"{domain}/x"].astype(np.float64), D[f"{domain}/q"]
    h: Heads = (D[f"{domain}/mean"], D[f"{domain}/scale"], D[f"{domain}/w"], D[f"{domain}/b"])
    order = np.random.default_rng(draw).permutation(len(x))
    test, user = order[:TEST_ROWS], order[TEST_ROWS:][:n]
    xt, qt, xu, qu = x[test], q[test], x[user], q[user]
    tests = {"none": apgr(score(h, xt), qt)[0]}
    for c in CORRECTION_GRID:
        tests[f"{c:g}"] = apgr(score(corrected(h, xu, qu, c), xt), qt)[0]
    assign = np.random.default_rng(draw).permutation(n) % 5
    entropy, per_fold = {}, {}
    for c in (None, *CORRECTION_GRID):
        losses, folds = [], []
        for k in range(5):
            held, train = assign == k, assign != k
            fitted = h if c is None else corrected(h, xu[train], qu[train], c)
            losses.append(cross_entropy(fitted, xu[held], qu[held]))
            folds.append(apgr(score(fitted, xu[held]), qu[held]))
        key = "none" if c is None else f"{c:g}"
        entropy[key], per_fold[key] = float(np.mean(losses)), span_weighted(folds)
    best = min(entropy, key=lambda key: entropy[key])
    chosen = "none" if best == f"{CORRECTION_GRID[0]:g}" else best
    # The product: once corrected, averaged with heads on the user's rows alone (LinearConfig.own_c).
    product = tests["none"] if chosen == "none" else apgr(averaged_score(
        [corrected(h, xu, qu, float(chosen)), alone(xu, qu, OWN_C)], xt), qt)[0]
    c_scores = {}
    for c in C_GRID:
        results = []
        for k in range(5):
            held, train = assign == k, assign != k
            results.append(apgr(score(alone(xu[train], qu[train], c), xu[held]), qu[held]))
        c_scores[c] = span_weighted(results)
    c_user = max(C_GRID, key=lambda c: c_scores[c])
    return {"domain": domain, "draw": draw, "n": n, "base only": tests["none"], "base+user": product,
            "correction alone": tests[chosen], "user only": apgr(score(alone(xu, qu, c_user), xt), qt)[0],
            "chosen": chosen, "fixed": tests, "cross_entropy": entropy, "fold_apgr": per_fold}


def one_blas_thread() -> None:
    """Pool initializer: each process runs on one BLAS thread. The fits are chains of small matrix-vector
    products, for which waking BLAS threads costs more than it saves: 12x slower on a 2-core machine with as
    many processes as cores (one draw at n = 300: 18.3 s against 1.5 s)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # numpy + scipy only: the machine's defaults
        return
    threadpool_limits(limits=1, user_api="blas")


def run(draws: int, out: Path) -> None:
    D.update(np.load(PACK))  # read whole before forking: workers sharing one open zip file corrupt its reads
    tasks = [(d, k, n) for k in range(draws) for n in SIZES for d in DOMAINS]
    start = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    with Pool(os.cpu_count(), initializer=one_blas_thread) as pool, (out / "draws.jsonl").open("w") as f:
        for rec in pool.imap_unordered(one_draw, tasks):
            f.write(json.dumps(rec) + "\n")
    print(f"{len(tasks)} fits in {time.perf_counter() - start:.0f}s")


ROUTERS = ("base+user", "correction alone", "user only", "base only")


def report(path: Path) -> None:
    recs = [json.loads(line) for line in path.read_text().splitlines()]
    results: dict[str, dict] = {}
    for domain in DOMAINS:
        results[domain] = {}
        for name in ROUTERS:
            results[domain][name] = {}
            for n in SIZES:
                rs = sorted((r for r in recs if r["domain"] == domain and r["n"] == n), key=lambda r: r["draw"])
                v = np.array([r[name] for r in rs])
                below = np.array([r[name] < r["base only"] - 0.005 for r in rs])
                results[domain][name][str(n)] = {"mean": float(v.mean()), "std": float(v.std()),
                                                 "below_base": float(below.mean()), "draws": len(rs)}
    summary = {"draws": len({r["draw"] for r in recs}), "test_rows": TEST_ROWS, "results": results}
    out = ROOT / "benchmarks" / "results"
    (out / "router_learning_draws.json").write_text(json.dumps(summary, indent=2) + "\n")
    lines = ["| new domain | router | " + " | ".join(f"n={n}" for n in SIZES) + " |", "|" + " --- |" * (2 + len(SIZES))]
    for domain, by_router in results.items():
        for name, by_n in by_router.items():
            cells = [f"{c['mean']:.3f} ± {c['std']:.3f}" + (f" ({c['below_base']:.0%} < base)" if name != "base only"
                                                            else "") for c in by_n.values()]
            lines.append(f"| {domain} | {name} | " + " | ".join(cells) + " |")
    (out / "router_learning_draws.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    plot(results, out / "router_learning_draws.png", summary["draws"])


def plot(results: dict[str, dict], path: Path, draws: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), dpi=120, squeeze=False)
    for ax, (domain, by_router) in zip(axes[0], results.items(), strict=True):
        for name, by_n in by_router.items():
            style = {"base only": ":", "user only": "--", "correction alone": "-."}.get(name, "-")
            ax.errorbar(list(SIZES), [by_n[str(n)]["mean"] for n in SIZES], yerr=[by_n[str(n)]["std"] for n in SIZES],
                        fmt=style, marker="o", capsize=3, label=name)
        ax.set_xscale("log")
        ax.set_xticks(list(SIZES), [str(n) for n in SIZES])
        ax.set_xlabel("user rows with outcomes (n)")
        ax.set_ylabel(f"held-out APGR (mean ± sd, {draws} draws)")
        ax.set_title(f"new domain: {domain}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("step", choices=("pack", "run", "report"))
    parser.add_argument("path", nargs="?", type=Path)
    parser.add_argument("--draws", type=int, default=40)
    parser.add_argument("--out", type=Path, default=Path("."))
    args = parser.parse_args()
    if args.step == "pack":
        pack()
    elif args.step == "run":
        run(args.draws, args.out)
    else:
        report(args.path)
