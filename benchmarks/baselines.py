"""Simple baselines that every router in the quality table is shown beside.

  length  longer prompts go strong first (no training)
  probe   scikit-learn logistic regression (L2, C=0.03) on the default encoder's sentence embeddings;
          label 1 where the strong model is right and the weak one wrong, else 0; no groups, no length
A router that cannot beat `probe` is not earning its complexity.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from routers.base import RouterRuntime, embedder_for
from routers.data import Preference
from routers.embeddings import DEFAULT_ENCODER

BASELINES = ("length", "probe")


class LengthBaseline:
    def win_rate(self, prompts: Sequence[str]) -> np.ndarray:
        return np.array([len(p) for p in prompts], dtype=np.float64)


class ProbeBaseline:
    def __init__(self, rows: Sequence[Preference], runtime: RouterRuntime, c: float = 0.03) -> None:
        from sklearn.linear_model import LogisticRegression

        self.embedder = embedder_for(DEFAULT_ENCODER, runtime)
        y = np.array([1 if r.label >= 1.0 else 0 for r in rows])  # strong right, weak wrong
        self.model = LogisticRegression(C=c, max_iter=2000).fit(self.embedder.embed([r.prompt for r in rows]), y)

    def win_rate(self, prompts: Sequence[str]) -> np.ndarray:
        return self.model.predict_proba(self.embedder.embed(prompts))[:, 1]


def train_baseline(name: str, rows: Sequence[Preference], runtime: RouterRuntime) -> LengthBaseline | ProbeBaseline:
    if name == "length":
        return LengthBaseline()
    if name == "probe":
        return ProbeBaseline(rows, runtime)
    raise ValueError(f"unknown baseline {name!r}; choose from {BASELINES}")
