"""The paper's baseline: ignore the prompt; a uniform score makes a threshold at x call strong for ~x of prompts."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence

import numpy as np

from routers.base import Router, RouterRuntime, TrainOptions
from routers.data import Preference


class RandomRouter(Router):
    name = "random"
    learns = False

    def win_rate(self, prompts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        # Seeded by the prompt text, so a resumed or re-scored job routes the same way.
        seed = int(self.config.get("seed", 0))
        out = np.empty(len(prompts), dtype=np.float64)
        for i, p in enumerate(prompts):
            h = hashlib.blake2b(f"{seed}\x00{p}".encode(), digest_size=8).digest()
            out[i] = int.from_bytes(h, "big") / 2**64
        if progress:
            progress(len(prompts))
        return out

    @classmethod
    def train(cls, data: Sequence[Preference], runtime: RouterRuntime, options: TrainOptions) -> RandomRouter:
        return cls({"seed": options.seed}, runtime)
