"""A logistic head on fixed features, with its L2 strength chosen by grouped cross-validation.

Used where a router reads frozen features (causal_llm's SmolLM2 states) and as the linear-probe start of
bert's fine-tuning (LP-FT, Kumar et al. 2022: a probed head keeps the pretrained features intact early in
fine-tuning, which helps out of distribution). The head is fitted with one bias per group and a
`GroupPrior` for unseen groups (see routers/groups.py).

The L2 strength is picked by held-out routing quality (APGR from the labels), with whole groups (benchmark,
subject) held out when the rows carry several: a router must rank prompts of subjects it never saw, and
within-group validation would reward memorising each subject's base rate instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from routers.evaluate import curve
from routers.groups import MIN_GROUPS, GroupPrior, group_ids

L2_GRID = (1e-4, 1e-3, 1e-2, 1e-1)


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float, ids: np.ndarray | None = None,
                 max_iter: int = 200) -> tuple[np.ndarray, np.ndarray]:
    """Minimise mean BCE(sigmoid(x w + b[ids]), y) + l2 |w|^2 (soft labels allowed); returns (w, b).
    `ids` gives each row's bias (fixed effects, unpenalised); None: one bias for all rows."""
    xt, yt = torch.from_numpy(np.asarray(x, dtype=np.float32)), torch.from_numpy(np.asarray(y, dtype=np.float32))
    it = torch.zeros(len(y), dtype=torch.long) if ids is None else torch.from_numpy(np.asarray(ids, dtype=np.int64))
    w = torch.zeros(xt.shape[1], requires_grad=True)
    b = torch.zeros(int(it.max()) + 1 if len(it) else 1, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(xt @ w + b[it], yt) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach().numpy().astype(np.float64), b.detach().numpy().astype(np.float64)


@dataclass(frozen=True)
class Head:
    """logit(prompt) = features . w + prior.offsets(prompt)."""

    w: np.ndarray
    prior: GroupPrior
    l2: float
    row_bias: np.ndarray  # each training row's own group bias (what fine-tuning continues from)
    tried: dict[str, float] = field(default_factory=dict)  # held-out APGR of each L2 tried


def _fit_head(x: np.ndarray, y: np.ndarray, groups: Sequence[str], prompts: Sequence[str], l2: float
              ) -> tuple[np.ndarray, GroupPrior, np.ndarray]:
    _, ids = group_ids(groups)
    w, b = fit_logistic(x, y, l2, ids)
    return w, GroupPrior.fit(b, ids, prompts), b[ids]


def fit_head(x: np.ndarray, y: np.ndarray, groups: Sequence[str], prompts: Sequence[str],
             l2: float | None = None, seed: int = 0) -> Head:
    """The head on all rows; `l2` None: chosen by `choose_l2` first."""
    tried: dict[str, float] = {}
    if l2 is None:
        l2, tried = choose_l2(x, y, groups, prompts, seed=seed)
    w, prior, row_bias = _fit_head(x, y, groups, prompts, l2)
    return Head(w, prior, float(l2), row_bias, tried)


def outcome_score(z_strong: np.ndarray, z_weak: np.ndarray) -> np.ndarray:
    """The preference-scale score from two quality heads: 0.5 + 0.5 (P(strong right) - P(weak right)), what a
    preference classifier's output tracks too."""
    return 0.5 * (1.0 + 1.0 / (1.0 + np.exp(-z_strong)) - 1.0 / (1.0 + np.exp(-z_weak)))


def fit_outcome_heads(x: np.ndarray, outcomes: np.ndarray, groups: Sequence[str], prompts: Sequence[str],
                      l2: float) -> tuple[Head, Head]:
    """One group-robust head per model's quality (columns of `outcomes`: strong, weak). Outcome rows say
    more than their preference label: a tie of two right answers (an easy prompt) and of two wrong ones (a
    prompt neither model can do) are the same label, but not the same prompt."""
    heads = []
    for column in (0, 1):
        w, prior, row_bias = _fit_head(x, outcomes[:, column], groups, prompts, l2)
        heads.append(Head(w, prior, float(l2), row_bias))
    return heads[0], heads[1]


def label_apgr(scores: np.ndarray, labels: np.ndarray) -> float:
    """APGR on preference labels: a label y stands for strong quality y and weak quality 1 - y."""
    c = curve(np.asarray(scores), np.asarray(labels, dtype=np.float64), 1.0 - np.asarray(labels, dtype=np.float64))
    return float(np.trapezoid(c.pgr, c.fraction))


def validation_folds(groups: Sequence[str], k: int = 5, seed: int = 0) -> list[np.ndarray]:
    """Index arrays of k validation folds: whole groups when there are enough of them, else random rows."""
    n = len(groups)
    rng = np.random.default_rng(seed)
    names = sorted(set(groups))
    if len(names) >= MIN_GROUPS:
        order = rng.permutation(len(names))
        fold_of = {names[j]: i % k for i, j in enumerate(order)}
        assign = np.array([fold_of[g] for g in groups])
    else:
        assign = rng.permutation(n) % k
    return [np.nonzero(assign == i)[0] for i in range(min(k, len(set(assign.tolist()))))]


def choose_l2(x: np.ndarray, y: np.ndarray, groups: Sequence[str], prompts: Sequence[str],
              grid: Sequence[float] = L2_GRID, seed: int = 0, outcomes: np.ndarray | None = None
              ) -> tuple[float, dict[str, float]]:
    """The grid value with the best held-out APGR over the folds (and every value's score). A held-out
    group is scored as an unseen one would be: through the prior, not a bias of its own. With `outcomes`
    (strong, weak quality per row) the candidate is the pair of quality heads (`fit_outcome_heads`)."""
    folds = validation_folds(groups, seed=seed)
    if len(folds) < 2:
        return float(grid[len(grid) // 2]), {}
    found: dict[str, float] = {}
    for l2 in grid:
        per_fold, spans = [], []
        for held in folds:
            train = np.ones(len(y), dtype=bool)
            train[held] = False
            rows = np.nonzero(train)[0].tolist()
            span = float(np.mean(2 * y[held] - 1))  # strong minus weak quality on the held-out rows
            if span <= 0:
                continue
            fold_groups, fold_prompts = [groups[i] for i in rows], [prompts[i] for i in rows]
            held_prompts = [prompts[i] for i in held.tolist()]
            if outcomes is None:
                w, prior, _ = _fit_head(x[rows], y[rows], fold_groups, fold_prompts, l2)
                scores = x[held] @ w + prior.offsets(held_prompts)
            else:
                strong, weak = fit_outcome_heads(x[rows], outcomes[rows], fold_groups, fold_prompts, l2)
                scores = outcome_score(x[held] @ strong.w + strong.prior.offsets(held_prompts),
                                       x[held] @ weak.w + weak.prior.offsets(held_prompts))
            per_fold.append(label_apgr(scores, y[held]))
            spans.append(span)
        # Weighted by span: PGR divides by it, so a fold where the two models nearly tie has a huge, noisy
        # APGR (ratio of sums, not mean of ratios).
        found[f"{l2:g}"] = float(np.average(per_fold, weights=spans)) if per_fold else 0.0
    best = max(grid, key=lambda v: found[f"{v:g}"])
    return float(best), found
