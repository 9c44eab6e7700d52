"""Group-robust training: learn what makes a prompt need the strong model more than others of its group.

Training rows come in groups (a benchmark, an MMLU subject); each group has its own base rate of strong
wins. A router fitted on the raw labels spends its capacity recognising the group and memorising that rate,
which is worthless on a group it has never seen (and, by embedding similarity, often wrong). So routers
fit their prompt model with one free bias per group (fixed effects): the prompt model then learns only the
within-group signal, which is what carries over. The between-group part is modelled separately by a
`GroupPrior`: a weighted least-squares line through the groups' biases against their mean log prompt length
(longer prompts, such as reading passages and long word problems, tend to gain more from the strong
model; the slope is learned, and is zero when the data says so).

With fewer than `MIN_GROUPS` groups large enough to estimate, nothing changes: the rows share one bias,
and the prior is flat.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

MIN_GROUPS = 4
MIN_GROUP_ROWS = 20  # smaller groups share one bias: a bias per handful of rows would absorb their labels


def log_length(prompts: Sequence[str]) -> np.ndarray:
    return np.log1p(np.array([len(p) for p in prompts], dtype=np.float64))


def group_ids(groups: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """(names, index per row) of the bias each row gets; one shared bias when the groups are too few."""
    counts = Counter(groups)
    big = sorted(g for g, n in counts.items() if n >= MIN_GROUP_ROWS)
    if len(big) < MIN_GROUPS:
        return ["*"], np.zeros(len(groups), dtype=np.int64)
    names = [*big, "*"] if len(big) < len(counts) else big
    index = {g: i for i, g in enumerate(names)}
    return names, np.array([index.get(g, index.get("*", 0)) for g in groups], dtype=np.int64)


@dataclass(frozen=True)
class GroupPrior:
    """offset(prompt) = intercept + slope * log(1 + characters): the bias a prompt of an unseen group gets."""

    intercept: float
    slope: float = 0.0
    groups: int = 1

    @classmethod
    def fit(cls, biases: np.ndarray, ids: np.ndarray, prompts: Sequence[str]) -> GroupPrior:
        """Fit to the learned per-group biases (`biases[ids[i]]` is row i's), weighting a group by sqrt(rows)."""
        biases = np.asarray(biases, dtype=np.float64)
        counts = np.bincount(ids, minlength=len(biases)).astype(np.float64)
        lengths = np.bincount(ids, weights=log_length(prompts), minlength=len(biases)) / np.maximum(counts, 1)
        keep = counts > 0
        if keep.sum() < MIN_GROUPS or np.ptp(lengths[keep]) < 1e-9:
            return cls(float(np.average(biases[keep], weights=counts[keep])), 0.0, int(keep.sum()))
        slope, intercept = np.polyfit(lengths[keep], biases[keep], 1, w=np.sqrt(counts[keep]))
        return cls(float(intercept), float(slope), int(keep.sum()))

    def offsets(self, prompts: Sequence[str]) -> np.ndarray:
        return self.intercept + self.slope * log_length(prompts)

    def to_config(self) -> dict[str, float | int]:
        """As saved in config.json's `group_prior`."""
        return asdict(self)

    @classmethod
    def from_config(cls, saved: Mapping[str, float | int] | None) -> GroupPrior:
        """From config.json's `group_prior`; none (routers saved before priors): no offset."""
        if not saved:
            return cls(0.0)
        return cls(float(saved["intercept"]), float(saved.get("slope", 0.0)), int(saved.get("groups", 1)))


def win_probability(logits: np.ndarray, prompts: Sequence[str], prior: GroupPrior) -> np.ndarray:
    """sigmoid(prompt-model logit + the group prior's offset): the score of a logit-based router."""
    z = np.asarray(logits, dtype=np.float64) + prior.offsets(prompts)
    return 1.0 / (1.0 + np.exp(-z))
