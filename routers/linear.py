"""The default router: two logistic quality heads on every layer of the default encoder.

What it scores: P(strong answer good | prompt) - P(weak answer good | prompt), each from a logistic
regression (scikit-learn) on the prompt's features, mapped to [0, 1] as 0.5 * (1 + difference). That is the
expected quality gained by calling the strong model, which is what a batch is ranked by.

Why each part (every choice below was made on the unlike-data protocols of benchmarks/protocols.py, held-out
benchmarks and MMLU domains, with the training rows' own validation choosing the numbers):
- Features: the mean-pooled token states of *every* layer of MiniLM, concatenated (7 x 384), standardised.
  The sentence embedding alone (the top layer) says what a prompt is about; lower layers keep what it looks
  like (numbers, code, long words), which carries across subjects better. One forward pass gives all layers.
- Two quality heads instead of one "strong wins" head: a tie of two right answers (an easy prompt) and of
  two wrong ones (a prompt neither model can do) are different prompts; the heads keep them apart.
- No per-group biases and no length prior: between-benchmark differences (math word problems gain more from
  the strong model than trivia) are exactly what transfers to open-ended traffic.
- Strong L2: `c` (scikit-learn's inverse strength) is chosen from a grid by grouped validation inside the
  training rows (whole benchmarks/subjects held out), scored by held-out APGR.
- A user's own traffic (`TrainOptions.focus_groups`, e.g. retraining on stored feedback) is a domain
  correction: the heads are fitted on the base rows, then a logistic residual is fitted on the user's rows
  with the base logits held fixed (a fit centred on the base weights, not on zero), its strength (or none at
  all) chosen by 5-fold cross-validation on those rows. Its free intercept takes the domain's own base rate,
  so what it learns is what ranks the user's prompts; simply adding the rows to the base data did worse (they
  mostly taught the model to tell the domains apart). The strength is chosen by held-out cross-entropy of the
  two heads, not held-out APGR: APGR on folds of 20-60 rows is noise (over 40 draws of 100 GSM8K rows it chose
  corrections that lost 0.02 on average against the base heads, up to 0.11), a proper score on the same rows
  is far steadier (level with the base heads at 100 rows, +0.038 at 300, +0.073 at 1000). A stack on the base
  logits and prompt length gained less (benchmarks/results/router_learning.md). Once corrected, the heads are
  averaged with heads fitted on the user's rows alone (`own_c`): chosen on development domains, it was level or
  better on GSM8K and MMLU STEM at every n (benchmarks/results/router_learning_rank.md).
Preference rows without per-model qualities (arena battles, feedback) enter as qualities (label, 1 - label).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch
from scipy.optimize import minimize
from scipy.special import expit
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from routers.base import Router, RouterRuntime, TrainOptions, embed_rows, embedder_for
from routers.embeddings import DEFAULT_ENCODER
from routers.evaluate import curve
from routers.linear_head import validation_folds
from routers.rows import Preference, data_hash


@dataclass(frozen=True)
class LinearConfig:
    # Whose layers are the features: MiniLM ships offline, and all its 7 x 384 layer means come from one fast
    # forward pass on a CPU. Scoring must use the encoder training used, so it is saved with the router.
    encoder: str = DEFAULT_ENCODER
    # scikit-learn's C (inverse L2 strength) of both quality heads. None: chosen from C_GRID by grouped
    # validation (whole benchmarks/subjects held out), which favours the strong penalties that carry to
    # unseen traffic; a number skips that validation (faster, e.g. for repeated fits on one data set).
    c: float | None = None
    # The correction fitted on the user's own rows (`TrainOptions.focus_groups`): "auto" chooses its C, or
    # none, by validation on those rows; None never corrects; a number always corrects with that C.
    focus_c: float | Literal["auto"] | None = "auto"
    # When the user's rows correct the base heads, heads fitted on those rows alone (this C, fixed, the middle of
    # C_GRID) are averaged with the corrected ones: two fits with different biases (one anchored on the base
    # data, one not) rank better together. Chosen on development domains (MMLU clusters), then held on GSM8K and
    # MMLU STEM (benchmarks/router_learning_rank.py). None: the corrected heads alone.
    own_c: float | None = 1e-4


C_GRID = (1e-5, 3e-5, 1e-4, 3e-4)
CORRECTION_GRID = (1e-5, 1e-4, 1e-3, 1e-2)  # C of the correction fitted on the user's rows: slight to near refit
MIN_FOCUS_ROWS = 20  # fewer: too few to validate a correction on; the base router stays


@dataclass(frozen=True)
class Heads:
    """Standardisation + one logistic head per model's quality, for each member; the members' probabilities are
    averaged (one member, or two once a user's rows have corrected the base heads)."""

    mean: np.ndarray
    scale: np.ndarray
    w: np.ndarray  # (members, 2, d): strong, weak
    b: np.ndarray  # (members, 2)

    def probabilities(self, x: np.ndarray) -> np.ndarray:
        """(n, 2): P(strong answer good), P(weak answer good)."""
        z = (x - self.mean) / self.scale
        return np.mean([expit(z @ w.T + b) for w, b in zip(self.w, self.b, strict=True)], axis=0)

    def score(self, x: np.ndarray) -> np.ndarray:
        p = self.probabilities(x)
        return 0.5 * (1.0 + p[:, 0] - p[:, 1])


def qualities(rows: Sequence[Preference]) -> np.ndarray:
    """(n, 2) strong and weak quality in [0, 1]; a preference label y without them is (y, 1 - y)."""
    return np.array([(r.strong, r.weak) if r.strong is not None and r.weak is not None else (r.label, 1 - r.label)
                     for r in rows], dtype=np.float64)


def _fit_quality(x: np.ndarray, q: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """Logistic regression on a soft target: each row is a positive with weight q and a negative with 1 - q."""
    xs = np.concatenate([x, x])
    ys = np.concatenate([np.ones(len(x)), np.zeros(len(x))])
    ws = np.concatenate([q, 1.0 - q])
    keep = ws > 0  # binary outcomes: only one copy of each row carries weight
    if len(set(ys[keep].tolist())) < 2:  # this model always (or never) did well here: a constant head
        share = float(np.clip(q.mean(), 1e-4, 1 - 1e-4))
        return np.zeros(x.shape[1]), float(np.log(share / (1 - share)))
    model = LogisticRegression(C=c, max_iter=2000).fit(xs[keep], ys[keep], sample_weight=ws[keep])
    return model.coef_[0].astype(np.float64), float(model.intercept_[0])


def fit_heads(x: np.ndarray, q: np.ndarray, c: float) -> Heads:
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    (ws, bs), (ww, bw) = _fit_quality(z, q[:, 0], c), _fit_quality(z, q[:, 1], c)
    return Heads(mean, scale, np.stack([ws, ww])[None], np.array([[bs, bw]]))


def heldout_apgr(scores: np.ndarray, q: np.ndarray) -> tuple[float, float]:
    """(APGR, span) of a ranking on rows with known qualities; span = strong - weak mean quality."""
    c = curve(scores, q[:, 0], q[:, 1])
    return float(np.trapezoid(c.pgr, c.fraction)), float(q[:, 0].mean() - q[:, 1].mean())


def _span_weighted(results: list[tuple[float, float]]) -> float:
    # PGR divides by the span: a fold where the models nearly tie gives a huge, noisy APGR, so folds are
    # weighted by span (a ratio of sums) and folds with span <= 0 are skipped.
    kept = [(a, s) for a, s in results if s > 0]
    return float(np.average([a for a, _ in kept], weights=[s for _, s in kept])) if kept else 0.0


def choose_c(x: np.ndarray, q: np.ndarray, groups: Sequence[str], seed: int = 0) -> tuple[float, dict[str, float]]:
    """The grid value with the best span-weighted APGR over grouped validation folds."""
    folds = validation_folds(groups, seed=seed)
    if len(folds) < 2:
        return C_GRID[1], {}
    tried: dict[str, float] = {}
    for c in C_GRID:
        results = []
        for held in folds:
            train = np.ones(len(x), dtype=bool)
            train[held] = False
            results.append(heldout_apgr(fit_heads(x[train], q[train], c).score(x[held]), q[held]))
        tried[f"{c:g}"] = _span_weighted(results)
    return max(C_GRID, key=lambda v: tried[f"{v:g}"]), tried


def _fit_correction(z: np.ndarray, offset: np.ndarray, q: np.ndarray, c: float) -> tuple[np.ndarray, float]:
    """A logistic residual on top of fixed logits: minimise c * sum(BCE(offset + z v + b, q)) + |v|^2 / 2
    (scikit-learn's C convention; the intercept b is free, so a domain's own base rate costs nothing)."""
    def loss(theta: np.ndarray) -> tuple[float, np.ndarray]:
        v, b = theta[:-1], theta[-1]
        logit = offset + z @ v + b
        p = expit(logit)
        value = c * float(np.sum(np.logaddexp(0.0, logit) - q * logit)) + 0.5 * float(v @ v)
        residual = c * (p - q)
        return value, np.concatenate([z.T @ residual + v, [residual.sum()]])

    # Each step is two small matrix-vector products: BLAS threads cost more to wake than they save (10x slower
    # on a 2-core machine with the default threads; benchmarks/router_learning_rank.py).
    with threadpool_limits(limits=1, user_api="blas"):
        theta = minimize(loss, np.zeros(z.shape[1] + 1), jac=True, method="L-BFGS-B", options={"maxiter": 500}).x
    return theta[:-1], float(theta[-1])


def correct_heads(heads: Heads, x: np.ndarray, q: np.ndarray, c: float) -> Heads:
    """The base heads (one member) plus a correction fitted on (x, q) with the base logits held fixed. Still one
    linear model: the correction adds to each head's weights and intercept."""
    (w,), (b,) = heads.w, heads.b
    z = (x - heads.mean) / heads.scale
    base = z @ w.T + b
    fits = [_fit_correction(z, base[:, k], q[:, k], c) for k in (0, 1)]
    return Heads(heads.mean, heads.scale, (w + np.stack([dw for dw, _ in fits]))[None],
                 (b + np.array([db for _, db in fits]))[None])


def with_own_fit(heads: Heads, x: np.ndarray, q: np.ndarray, c: float) -> Heads:
    """`heads` plus a member fitted on (x, q) alone (standardised on those rows, then written in the heads' own
    standardisation, so scoring standardises a prompt once for every member)."""
    mean, scale = x.mean(axis=0), x.std(axis=0) + 1e-6
    z = (x - mean) / scale
    fits = [_fit_correction(z, np.zeros(len(x)), q[:, k], c) for k in (0, 1)]
    v = np.stack([f[0] for f in fits]) / scale  # weights on raw x
    own_w = v * heads.scale
    own_b = np.array([f[1] for f in fits]) + v @ (heads.mean - mean)
    return Heads(heads.mean, heads.scale, np.concatenate([heads.w, own_w[None]]),
                 np.concatenate([heads.b, own_b[None]]))


def cross_entropy(heads: Heads, x: np.ndarray, q: np.ndarray) -> float:
    """Mean binary cross-entropy of both quality heads on rows with known (soft) qualities."""
    p = np.clip(heads.probabilities(x), 1e-12, 1 - 1e-12)
    return float(-np.mean(q * np.log(p) + (1 - q) * np.log(1 - p)))


def choose_correction(heads: Heads, x: np.ndarray, q: np.ndarray, seed: int = 0
                      ) -> tuple[float | None, dict[str, float]]:
    """How far the user's rows may move the base heads: 5-fold over those rows, the base heads fixed (they never
    saw these rows), each candidate's held-out cross-entropy (lower is better). None, no correction, is a
    candidate, and the base heads also stay when only the weakest correction (the base rate) fits best."""
    if len(x) < MIN_FOCUS_ROWS:
        return None, {}
    assign = np.random.default_rng(seed).permutation(len(x)) % 5
    tried: dict[str, float] = {}
    for c in (None, *CORRECTION_GRID):
        losses = []
        for k in range(5):
            held, train = assign == k, assign != k
            fitted = heads if c is None else correct_heads(heads, x[train], q[train], c)
            losses.append(cross_entropy(fitted, x[held], q[held]))
        tried["none" if c is None else f"{c:g}"] = float(np.mean(losses))
    best = min(tried, key=lambda key: tried[key])
    # The weakest correction barely moves the weights: it mostly refits each head's intercept, the domain's base
    # rate. When that fits the user's held-out rows best, their rows have taught nothing about which of their
    # prompts need the strong model yet, and a base rate alone changes the ranking for the worse (p_strong -
    # p_weak is not shift-invariant): the base heads stay.
    if best in ("none", f"{CORRECTION_GRID[0]:g}"):
        return None, tried
    return float(best), tried


class LinearRouter(Router[LinearConfig]):
    name = "linear"
    config_class = LinearConfig

    def __init__(self, config: LinearConfig, runtime: RouterRuntime, heads: Heads,
                 tried: dict[str, dict[str, float]] | None = None) -> None:
        super().__init__(config, runtime)
        self.heads = heads
        # Validation scores of the choices training made: "c_tried" (held-out APGR per C, when `c` was chosen)
        # and "focus_tried" (held-out cross-entropy per correction, "none" included, when `focus_c` was chosen).
        self.tried = tried or {}
        self.embedder = embedder_for(config.encoder, runtime, layers=True)

    def tensors(self) -> dict[str, Any]:
        h = self.heads
        # One member is saved as (2, d), the layout routers had before members (the shipped checkpoint); more
        # as (members, 2, d).
        w, b = (h.w[0], h.b[0]) if len(h.w) == 1 else (h.w, h.b)
        return {k: torch.from_numpy(np.asarray(v, dtype=np.float32))
                for k, v in (("mean", h.mean), ("scale", h.scale), ("w", w), ("b", b))}

    def learned(self) -> dict[str, Any]:
        return dict(self.tried)

    @classmethod
    def restore(cls, config: LinearConfig, saved: Mapping[str, Any], tensors: dict[str, Any],
                runtime: RouterRuntime) -> LinearRouter:
        arrays = {k: v.double().numpy() for k, v in tensors.items()}
        if arrays["w"].ndim == 2:  # one member
            arrays["w"], arrays["b"] = arrays["w"][None], arrays["b"][None]
        return cls(config, runtime, Heads(arrays["mean"], arrays["scale"], arrays["w"], arrays["b"]),
                   {key: saved[key] for key in ("c_tried", "focus_tried") if key in saved})

    def win_rate(self, prompts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        if not prompts:
            return np.zeros(0)
        return self.heads.score(self.embedder.embed(prompts, progress=progress).astype(np.float64))

    @classmethod
    def train(cls, data: Sequence[Preference], runtime: RouterRuntime, options: TrainOptions) -> LinearRouter:
        config = cls.configure(options)
        x = embed_rows(config.encoder, data, runtime, options, layers=True).astype(np.float64)
        q = qualities(data)
        in_focus = np.array([r.group in options.focus_groups for r in data], dtype=bool)
        focus = in_focus if not in_focus.all() else np.zeros(len(data), dtype=bool)  # no base rows to correct
        base = ~focus
        tried: dict[str, dict[str, float]] = {}
        c = config.c
        if c is None:
            groups = [r.group for r, keep in zip(data, base, strict=True) if keep]
            c, tried["c_tried"] = choose_c(x[base], q[base], groups, options.seed)
        if options.progress:
            options.progress("validate", 1, 2)
        heads = fit_heads(x[base], q[base], c)
        focus_c = config.focus_c
        if focus.any():
            if focus_c == "auto":
                focus_c, tried["focus_tried"] = choose_correction(heads, x[focus], q[focus], options.seed)
            if focus_c is not None:
                heads = correct_heads(heads, x[focus], q[focus], focus_c)
                if config.own_c is not None:
                    heads = with_own_fit(heads, x[focus], q[focus], config.own_c)
        if options.progress:
            options.progress("validate", 2, 2)
        router = cls(replace(config, c=c, focus_c=focus_c), runtime, heads, tried)
        router.trained = {"rows": len(data), "focus_rows": int(in_focus.sum()), "data_hash": data_hash(data),
                          "seed": options.seed}
        return router
