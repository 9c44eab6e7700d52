"""Similarity-weighted ranking router (RouteLLM section 4.1, "SW ranking").

For a prompt q, every training battle i is weighted by its prompt's similarity to q,
w_i = gamma ** (1 + S(q, q_i) / max_j S(q, q_j)), and a Bradley-Terry model is fitted to the weighted
battles. With two players (strong, weak) and ties counted as half a win for each, the weighted BT maximum
likelihood gives P(strong beats weak | q) = sum_i w_i y_i / sum_i w_i, so no per-query optimiser is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from routers.base import Router, RouterRuntime, TrainOptions, embed_rows, embedder_for
from routers.data import Preference, data_hash
from routers.embeddings import DEFAULT_ENCODER
from routers.groups import GroupPrior, group_ids

DEFAULTS: dict[str, Any] = {"encoder": DEFAULT_ENCODER, "gamma": 10.0, "chunk": 512}
EPS = 1e-4


class SWRankingRouter(Router):
    name = "sw_ranking"

    def __init__(self, config: dict[str, Any], runtime: RouterRuntime, embeddings: np.ndarray | None = None,
                 labels: np.ndarray | None = None) -> None:
        super().__init__(config, runtime)
        self.embedder = embedder_for(config["encoder"], runtime)
        self.embeddings = embeddings  # (n, d) unit rows of the training prompts
        self.labels = labels  # (n,) in [0, 1]

    def tensors(self) -> dict[str, Any]:
        import torch

        # float16 halves the file; cosine similarities need no more precision than that.
        return {"embeddings": torch.from_numpy(self.embeddings.astype(np.float16)),
                "labels": torch.from_numpy(self.labels.astype(np.float32))}

    @classmethod
    def from_tensors(cls, config: dict[str, Any], tensors: dict[str, Any], runtime: RouterRuntime) -> SWRankingRouter:
        return cls(config, runtime, tensors["embeddings"].float().numpy(), tensors["labels"].numpy())

    def win_rate(self, prompts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        prior = GroupPrior.from_config(self.config.get("group_prior")).offsets(prompts)
        queries = self.embedder.embed(prompts, progress=progress)
        gamma, chunk = float(self.config["gamma"]), int(self.config["chunk"])
        out = np.empty(len(prompts), dtype=np.float64)
        for start in range(0, len(queries), chunk):
            sims = queries[start : start + chunk] @ self.embeddings.T  # (m, n) cosine similarities
            top = np.maximum(sims.max(axis=1, keepdims=True), 1e-6)
            # gamma ** (1 + s / top), computed in log space and shifted per row so it cannot overflow.
            logw = (1.0 + sims / top) * np.log(gamma)
            w = np.exp(logw - logw.max(axis=1, keepdims=True))
            out[start : start + chunk] = (w @ self.labels) / w.sum(axis=1)
        return np.clip(out + prior, EPS, 1 - EPS)

    @classmethod
    def train(cls, data: Sequence[Preference], runtime: RouterRuntime, options: TrainOptions) -> SWRankingRouter:
        config = options.config(DEFAULTS)
        embeddings = embed_rows(config["encoder"], data, runtime, options)
        labels = np.array([r.label for r in data], dtype=np.float64)
        # Stored relative to each group's mean; the prior adds the between-group part back.
        names, ids = group_ids([r.group for r in data])
        means = np.bincount(ids, weights=labels, minlength=len(names)) / np.bincount(ids, minlength=len(names))
        config["group_prior"] = GroupPrior.fit(means, ids, [r.prompt for r in data]).to_config()
        labels = (labels - means[ids]).astype(np.float32)
        config["train"] = {"rows": len(data), "data_hash": data_hash(data)}
        return cls(config, runtime, embeddings, labels)
