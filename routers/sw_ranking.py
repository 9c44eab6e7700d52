"""Similarity-weighted ranking router (RouteLLM section 4.1, "SW ranking").

For a prompt q, every training battle i is weighted by its prompt's similarity to q,
w_i = gamma ** (1 + S(q, q_i) / max_j S(q, q_j)), and a Bradley-Terry model is fitted to the weighted
battles. With two players (strong, weak) and ties counted as half a win for each, the weighted BT maximum
likelihood gives P(strong beats weak | q) = sum_i w_i y_i / sum_i w_i, so no per-query optimiser is needed.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from routers.base import Router, RouterRuntime, TrainOptions, embed_rows, embedder_for
from routers.embeddings import DEFAULT_ENCODER
from routers.groups import GroupPrior, group_ids
from routers.rows import Preference, data_hash

EPS = 1e-4


@dataclass(frozen=True)
class SWRankingConfig:
    # The sentence encoder whose cosine similarities weight the battles; MiniLM ships offline and embeds ~50
    # prompts/s on a CPU. The training embeddings are stored with the router, so scoring must use the same one.
    encoder: str = DEFAULT_ENCODER
    # How sharply weight concentrates on the nearest battles: a battle's weight runs from gamma (unrelated) to
    # gamma**2 (the nearest). The paper's 10 still lets the many far battles outvote a few near ones; larger
    # values trust fewer neighbours (sharper, noisier).
    gamma: float = 10.0
    # Queries scored per block: the block's similarity matrix is chunk x training rows floats, so this bounds
    # scoring memory (512 x 12k rows ~ 50 MB) without slowing it.
    chunk: int = 512


class SWRankingRouter(Router[SWRankingConfig]):
    name = "sw_ranking"
    config_class = SWRankingConfig

    def __init__(self, config: SWRankingConfig, runtime: RouterRuntime, embeddings: np.ndarray,
                 labels: np.ndarray, prior: GroupPrior) -> None:
        super().__init__(config, runtime)
        self.embedder = embedder_for(config.encoder, runtime)
        self.embeddings = embeddings  # (n, d) unit rows of the training prompts
        self.labels = labels  # (n,) each row's label less its group's mean
        self.prior = prior  # the between-group part the labels had taken out

    def tensors(self) -> dict[str, Any]:
        # float16 halves the file; cosine similarities need no more precision than that.
        return {"embeddings": torch.from_numpy(self.embeddings.astype(np.float16)),
                "labels": torch.from_numpy(self.labels.astype(np.float32))}

    def learned(self) -> dict[str, Any]:
        return {"group_prior": self.prior.to_config()}

    @classmethod
    def restore(cls, config: SWRankingConfig, saved: Mapping[str, Any], tensors: dict[str, Any],
                runtime: RouterRuntime) -> SWRankingRouter:
        return cls(config, runtime, tensors["embeddings"].float().numpy(), tensors["labels"].numpy(),
                   GroupPrior.from_config(saved.get("group_prior")))

    def win_rate(self, prompts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        prior = self.prior.offsets(prompts)
        queries = self.embedder.embed(prompts, progress=progress)
        gamma, chunk = self.config.gamma, self.config.chunk
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
        config = cls.configure(options)
        embeddings = embed_rows(config.encoder, data, runtime, options)
        labels = np.array([r.label for r in data], dtype=np.float64)
        # Stored relative to each group's mean; the prior adds the between-group part back.
        names, ids = group_ids([r.group for r in data])
        means = np.bincount(ids, weights=labels, minlength=len(names)) / np.bincount(ids, minlength=len(names))
        prior = GroupPrior.fit(means, ids, [r.prompt for r in data])
        router = cls(config, runtime, embeddings, (labels - means[ids]).astype(np.float32), prior)
        router.trained = {"rows": len(data), "data_hash": data_hash(data)}
        return router
