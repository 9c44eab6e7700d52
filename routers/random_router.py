"""The paper's baseline: ignore the prompt; a uniform score makes a threshold at x call strong for ~x of prompts."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from routers.base import Router, RouterRuntime, TrainOptions, config_from_params
from routers.rows import Preference


@dataclass(frozen=True)
class RandomConfig:
    # Mixed into each prompt's hash: another seed is another (equally random) routing of the same prompts.
    # Training takes it from `--seed` unless a `seed` setting is given.
    seed: int = 0


class RandomRouter(Router[RandomConfig]):
    name = "random"
    config_class = RandomConfig
    learns = False

    def win_rate(self, prompts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        # Seeded by the prompt text, so a resumed or re-scored job routes the same way.
        out = np.empty(len(prompts), dtype=np.float64)
        for i, p in enumerate(prompts):
            h = hashlib.blake2b(f"{self.config.seed}\x00{p}".encode(), digest_size=8).digest()
            out[i] = int.from_bytes(h, "big") / 2**64
        if progress:
            progress(len(prompts))
        return out

    @classmethod
    def train(cls, data: Sequence[Preference], runtime: RouterRuntime, options: TrainOptions) -> RandomRouter:
        return cls(config_from_params(RandomConfig, {"seed": options.seed, **options.settings()}, cls.name), runtime)
