"""Ranking-aware choices of the domain correction: what the user's rows say about the *ranking*, not only the fit.

routers/linear.py chooses the correction's strength by 5-fold held-out cross-entropy over the user's rows. On
new domains like the base data (benchmarks/router_learning_dev_domains.py) that choice costs APGR: the gain in
cross-entropy comes from fitting the domain's levels, which p_strong - p_weak turns into a worse ranking. This
script records, per draw, for the base heads ("none"), the correction at each strength and the user's rows
alone, the 5-fold held-out cross-entropy per fold, the pooled out-of-fold scores of the user's rows and the
scores of the test rows, so `report` can try any rule on them (pooled out-of-fold APGR as a veto, blends).

    python benchmarks/router_learning_rank.py run dev DRAWS DIR     # humanities, social, other (choose here)
    python benchmarks/router_learning_rank.py run test DRAWS DIR    # gsm8k, mmlu-stem (report there)
    python benchmarks/router_learning_rank.py run-gain dev|test DRAWS DIR   # the gain correction (ridge), fast
    python benchmarks/router_learning_rank.py report DEV_DIR TEST_DIR  # -> results/router_learning_rank.md
"""

from __future__ import annotations

import sys
import time
from collections import defaultdict
from collections.abc import Callable
from multiprocessing import Pool
from pathlib import Path

import numpy as np
from scipy.special import expit

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
import benchmarks.router_learning_draws as B  # noqa: E402
from benchmarks.router_learning_rules import draw_rows  # noqa: E402

PACKS = {"dev": (ROOT / "benchmarks" / "cache" / "learning_dev.npz", ("mmlu-humanities", "mmlu-social", "mmlu-other")),
         "test": (B.PACK, B.DOMAINS)}
SIZES = (100, 300, 1000)
CORRECTIONS = (1e-5, 1e-4, 1e-3, 1e-2)  # routers/linear.py CORRECTION_GRID
ALONE = (1e-4,)


def _ce(logit: np.ndarray, q: np.ndarray) -> float:
    return float(np.mean(np.logaddexp(0.0, logit) - q * logit))


def one(task: tuple[str, int, int, str]) -> None:
    domain, draw, n, out = task
    h, xt, qt, xu, qu, assign = draw_rows(domain, draw, n)
    cands = {"none": None, **{f"c:{c:g}": ("c", c) for c in CORRECTIONS}, **{f"alone:{c:g}": ("a", c) for c in ALONE}}
    arrays: dict[str, np.ndarray] = {"qu": qu, "qt": qt, "assign": assign}
    for name, spec in cands.items():
        def fit(xs: np.ndarray, qs: np.ndarray, spec: tuple | None = spec) -> B.Heads:
            if spec is None:
                return h
            return B.corrected(h, xs, qs, spec[1]) if spec[0] == "c" else B.alone(xs, qs, spec[1])
        oof_logit = np.zeros((n, 2))
        ce = []
        for k in range(5):
            held, train = assign == k, assign != k
            fitted = fit(xu[train], qu[train])
            oof_logit[held] = B.logits(fitted, xu[held])
            ce.append(_ce(oof_logit[held], qu[held]))
        arrays[f"{name}/oof"] = oof_logit
        arrays[f"{name}/ce"] = np.array(ce)
        arrays[f"{name}/test"] = B.logits(fit(xu, qu), xt)
    np.savez_compressed(Path(out) / f"{domain}_{n}_{draw}.npz", **arrays)


RIDGE = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0)  # ridge penalty of the gain correction, in units of mean |z|^2


def one_gain(task: tuple[str, int, int, str]) -> None:
    """A correction of the *gain* itself: ridge regression of the observed strong-minus-weak quality's residual
    from the base heads' predicted gain, on the user's rows (dual form: n x n), at each penalty of RIDGE. It
    targets what a batch is ranked by, so it cannot improve its fit by learning the domain's difficulty."""
    domain, draw, n, out = task
    h, xt, _, xu, qu, assign = draw_rows(domain, draw, n)
    zt, zu = (xt - h[0]) / h[1], (xu - h[0]) / h[1]
    du, dt = gain(expit(B.logits(h, xu))), gain(expit(B.logits(h, xt)))
    r = (qu[:, 0] - qu[:, 1]) - du
    kuu, ktu = zu @ zu.T, zt @ zu.T
    unit = float(np.mean(np.diag(kuu)))
    # The domain's mean gain alone ("inf": no correction of the ranking) is the yardstick a penalty must beat.
    oof_mean = np.zeros(n)
    for k in range(5):
        oof_mean[assign == k] = du[assign == k] + r[assign != k].mean()
    arrays: dict[str, np.ndarray] = {"ridge:inf/doof": oof_mean, "ridge:inf/dtest": dt + r.mean()}
    for lam in RIDGE:
        oof = np.zeros(n)
        for k in range(5):
            held, train = assign == k, assign != k
            mu = r[train].mean()
            alpha = np.linalg.solve(kuu[np.ix_(train, train)] + lam * unit * np.eye(int(train.sum())), r[train] - mu)
            oof[held] = du[held] + kuu[np.ix_(held, train)] @ alpha + mu
        alpha = np.linalg.solve(kuu + lam * unit * np.eye(n), r - r.mean())
        arrays[f"ridge:{lam:g}/doof"] = oof
        arrays[f"ridge:{lam:g}/dtest"] = dt + ktu @ alpha + r.mean()
    np.savez_compressed(Path(out) / f"{domain}_{n}_{draw}.gain.npz", **arrays)


def run(which: str, draws: int, out: Path, fn: Callable = one) -> None:
    pack, domains = PACKS[which]
    B.D.update(np.load(pack))
    out.mkdir(parents=True, exist_ok=True)
    tasks = [(d, k, n, str(out)) for k in range(draws) for n in SIZES for d in domains]
    start = time.perf_counter()
    with Pool(initializer=B.one_blas_thread) as pool:
        for i, _ in enumerate(pool.imap_unordered(fn, tasks), 1):
            print(f"{i}/{len(tasks)} {time.perf_counter() - start:.0f}s", flush=True)


def load(dirs: list[Path]) -> list[dict]:
    recs = []
    for d in dirs:
        for f in sorted(d.glob("*_*_*[0-9].npz")):
            domain, n, draw = f.stem.rsplit("_", 2)
            a = dict(np.load(f))
            if f.with_suffix(".gain.npz").exists():
                a.update(np.load(f.with_suffix(".gain.npz")))
            recs.append({"domain": domain, "n": int(n), "draw": int(draw), **a})
    return recs


def names(rec: dict) -> list[str]:
    return [k[: -len("/ce")] for k in rec if k.endswith("/ce")] + [k[: -len("/doof")] for k in rec
                                                                   if k.endswith("/doof")]


def probs(rec: dict, name: str, part: str) -> np.ndarray:
    """(n, 2) P(strong good), P(weak good) of a candidate on the user's rows out of fold ("oof") or the test
    rows ("test"); "blend:A+B" is the mean of two candidates' probabilities."""
    if name.startswith("blend:"):
        a, b = name[len("blend:"):].split("+")
        return 0.5 * (probs(rec, a, part) + probs(rec, b, part))
    return expit(rec[f"{name}/{part}"])


def fold_ce(rec: dict, name: str) -> np.ndarray:
    p, q, assign = np.clip(probs(rec, name, "oof"), 1e-9, 1 - 1e-9), rec["qu"], rec["assign"]
    loss = -(q * np.log(p) + (1 - q) * np.log(1 - p)).mean(axis=1)
    return np.array([loss[assign == k].mean() for k in range(5)])


def gain(p: np.ndarray) -> np.ndarray:
    return p[:, 0] - p[:, 1]


RULES: dict[str, Callable[[dict], str]] = {}


def rule(fn: Callable[[dict], str]) -> Callable[[dict], str]:
    RULES[fn.__name__] = fn
    return fn


CORR = ["none", *(f"c:{c:g}" for c in CORRECTIONS)]


def _product(rec: dict) -> str:
    best = min(CORR, key=lambda k: fold_ce(rec, k).mean())
    return "none" if best == f"c:{CORRECTIONS[0]:g}" else best


def dvals(rec: dict, name: str, part: str) -> np.ndarray:
    """The predicted gain (strong minus weak quality) a candidate ranks by."""
    if f"{name}/d{part}" in rec:
        return rec[f"{name}/d{part}"]
    return gain(probs(rec, name, part))


def _oof_apgr(rec: dict, name: str, idx: np.ndarray | None = None) -> float:
    d, q = dvals(rec, name, "oof"), rec["qu"]
    if idx is not None:
        d, q = d[idx], q[idx]
    return B.apgr(d, q)[0]


@rule
def product(rec: dict) -> str:
    return _product(rec)


@rule
def veto_oof_apgr(rec: dict) -> str:
    """The product's choice, unless its pooled out-of-fold APGR is below the base heads' on the same rows."""
    pick = _product(rec)
    return pick if pick == "none" or _oof_apgr(rec, pick) >= _oof_apgr(rec, "none") else "none"


@rule
def veto_boot(rec: dict) -> str:
    """The product's choice, unless a paired bootstrap of the user's rows puts its pooled out-of-fold APGR below
    the base heads' more often than not (a smoother veto than one comparison)."""
    pick = _product(rec)
    if pick == "none":
        return pick
    rng = np.random.default_rng(rec["draw"])
    n = len(rec["qu"])
    wins = [_oof_apgr(rec, pick, i) >= _oof_apgr(rec, "none", i) for i in (rng.integers(0, n, n) for _ in range(50))]
    return pick if np.mean(wins) >= 0.5 else "none"


def _boot_wins(rec: dict, pick: str, draws: int = 200) -> float:
    """Share of paired bootstrap resamples of the user's rows where the pick ranks them (pooled out of fold) at
    least as well as the base heads."""
    rng = np.random.default_rng(rec["draw"])
    n = len(rec["qu"])
    return float(np.mean([_oof_apgr(rec, pick, i) >= _oof_apgr(rec, "none", i)
                          for i in (rng.integers(0, n, n) for _ in range(draws))]))


def _veto_below(share: float) -> Callable[[dict], str]:
    def veto(rec: dict) -> str:
        pick = _product(rec)
        return pick if pick == "none" or _boot_wins(rec, pick) >= share else "none"
    veto.__name__ = f"veto_sig{share:g}"
    return veto


for _share in (0.1, 0.2, 0.3):
    rule(_veto_below(_share))


@rule
def oof_apgr(rec: dict) -> str:
    return max(CORR, key=lambda k: _oof_apgr(rec, k))


@rule
def ce_with_blends(rec: dict) -> str:
    """Held-out cross-entropy over the corrections, the user's rows alone and the blend of each with the
    user's rows alone."""
    alone = [k for k in names(rec) if k.startswith("alone")]
    cands = [*CORR, *alone, *(f"blend:{c}+{a}" for c in CORR[1:] for a in alone)]
    best = min(cands, key=lambda k: fold_ce(rec, k).mean())
    return "none" if best == f"c:{CORRECTIONS[0]:g}" else best


@rule
def product_blend(rec: dict) -> str:
    """The product's choice, blended with the user's rows alone when it corrects."""
    pick = _product(rec)
    alone = [k for k in names(rec) if k.startswith("alone")]
    return pick if pick == "none" or not alone else f"blend:{pick}+{alone[0]}"


@rule
def ridge_mse(rec: dict) -> str:
    """The gain correction at the penalty with the lowest out-of-fold squared error of the gain; the base heads
    when no penalty beats them."""
    g = rec["qu"][:, 0] - rec["qu"][:, 1]
    cands = [k for k in names(rec) if k.startswith("ridge:")]
    if not cands:
        return "none"
    return min(cands, key=lambda k: float(np.mean((g - dvals(rec, k, "oof")) ** 2)))


def evaluate(rec: dict, pick: str) -> float:
    return B.apgr(dvals(rec, pick, "test"), rec["qt"])[0]


def report(dirs: list[Path]) -> str:
    recs = load(dirs)
    by: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in recs:
        by[(r["domain"], r["n"])].append(r)
    head = ["base only", "oracle", *RULES, *(k for k in names(recs[0]) if k != "none")]
    lines = ["| domain | n | draws | " + " | ".join(head) + " |", "|---|---:|---:|" + "---:|" * len(head)]
    for (domain, n), rs in sorted(by.items()):
        base = np.array([evaluate(r, "none") for r in rs])
        cells = [f"{base.mean():.3f}"]
        oracle = np.array([max(evaluate(r, k) for k in names(r) if not k.startswith("alone")) for r in rs])
        cells.append(f"{oracle.mean() - base.mean():+.3f}")
        for fn in RULES.values():
            v = np.array([evaluate(r, fn(r)) for r in rs])
            cells.append(f"{v.mean() - base.mean():+.3f}")
        for k in head[2 + len(RULES):]:
            v = np.array([evaluate(r, k) for r in rs])
            cells.append(f"{v.mean() - base.mean():+.3f}")
        lines.append(f"| {domain} | {n} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def paired(dirs: list[Path], rule_name: str, against: str = "product") -> str:
    """A rule against another, draw by draw: mean difference of test APGR +/- its standard error."""
    by: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for r in load(dirs):
        by[(r["domain"], r["n"])].append(r)
    lines = [f"| domain | n | {rule_name} - {against} (mean ± s.e.) | draws better / worse |", "|---|---:|---:|---:|"]
    for (domain, n), rs in sorted(by.items()):
        diff = np.array([evaluate(r, RULES[rule_name](r)) - evaluate(r, RULES[against](r)) for r in rs])
        lines.append(f"| {domain} | {n} | {diff.mean():+.4f} ± {diff.std(ddof=1) / np.sqrt(len(diff)):.4f} | "
                     f"{int((diff > 1e-9).sum())} / {int((diff < -1e-9).sum())} |")
    return "\n".join(lines) + "\n"


def write(dev: Path, test: Path) -> str:
    text = "\n".join([
        "# Choosing the domain correction: rules tried (benchmarks/router_learning_rank.py)", "",
        "Each cell: the mean over draws of held-out APGR on 300 test prompts of the new domain, as a change against "
        "the base heads on the same draws (`base only`: their APGR). `oracle`: the best of no correction and the "
        "product's four strengths, chosen per draw on its test rows (a ceiling, not a rule). Rules: `product` (the "
        "strength by 5-fold held-out cross-entropy; routers/linear.py), `veto_oof_apgr` (the product's choice unless "
        "the pooled out-of-fold APGR of the user's rows is lower than the base heads'), `veto_boot` and `veto_sigS` "
        "(the same veto only when a paired bootstrap of the user's rows finds the correction at least as good in "
        "fewer than 50% / S of 200 resamples), `oof_apgr` (strength by pooled out-of-fold APGR), `ce_with_blends` "
        "(cross-entropy over the corrections, the user's rows alone and their blends), `product_blend` (the "
        "product's correction averaged with the user's rows alone), `ridge_mse` (a ridge correction of the "
        "predicted strong-minus-weak gain itself, its penalty by out-of-fold squared error). The other columns are "
        "single candidates, fitted on all the user's rows.", "",
        "## Development domains (choose here): MMLU clusters like the base data", "", report([dev]),
        "## Reported domains: GSM8K (base: MMLU) and MMLU STEM (base: GSM8K + the other clusters)", "",
        report([test]),
        "## The rule adopted, paired draw by draw: the product's correction averaged with the user's rows alone", "",
        "Development domains:", "", paired([dev], "product_blend"), "Reported domains:", "",
        paired([test], "product_blend")])
    (ROOT / "benchmarks" / "results" / "router_learning_rank.md").write_text(text)
    return text


if __name__ == "__main__":
    if sys.argv[1] in ("run", "run-gain"):
        run(sys.argv[2], int(sys.argv[3]), Path(sys.argv[4]), one if sys.argv[1] == "run" else one_gain)
    else:
        print(write(Path(sys.argv[2]), Path(sys.argv[3])))
