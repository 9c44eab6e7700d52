"""What every router is: `win_rate(prompts)` plus save/load as safetensors + a JSON config."""

from __future__ import annotations

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from routers.data import Preference
from routers.embeddings import Embedder

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


@dataclass(frozen=True)
class RouterRuntime:
    """Where and how a router runs; not part of what it learned."""

    device: str = "auto"
    cache_dir: Path | None = None
    batch_size: int = 64


@dataclass
class TrainOptions:
    seed: int = 0
    epochs: int | None = None  # None: the router's own default
    params: dict[str, Any] = field(default_factory=dict)
    progress: Callable[[str, int, int], None] | None = None  # (stage, done, total)
    # Groups whose rows are the user's own traffic (e.g. stored feedback): routers that can, weight them up.
    focus_groups: frozenset[str] = frozenset()

    def config(self, defaults: dict[str, Any]) -> dict[str, Any]:
        """The router's defaults, overridden by `params` and `epochs`; a setting the router lacks is an error."""
        unknown = sorted(set(self.params) - set(defaults))
        if unknown:
            raise ValueError(f"unknown router setting(s) {unknown}; this router takes {sorted(defaults)}")
        config = {**defaults, **self.params}
        if self.epochs is not None:
            config["epochs"] = self.epochs
        return config


def embedder_for(encoder: str, runtime: RouterRuntime, layers: bool = False) -> Embedder:
    return Embedder(encoder, cache_dir=runtime.cache_dir, device=runtime.device, batch_size=runtime.batch_size,
                    layers=layers)


def embed_rows(encoder: str, data: Sequence[Preference], runtime: RouterRuntime, options: TrainOptions,
               layers: bool = False) -> np.ndarray:
    """Embeddings of the training prompts, reporting progress as the `embed` stage."""
    done = 0

    def on_embed(n: int) -> None:
        nonlocal done
        done += n
        if options.progress:
            options.progress("embed", done, len(data))

    return embedder_for(encoder, runtime, layers).embed([r.prompt for r in data], progress=on_embed)


class Router(ABC):
    """Scores prompts with the probability that the strong model is needed (its answer would win)."""

    name: ClassVar[str]
    learns: ClassVar[bool] = True  # False: usable by name with no checkpoint (random)

    def __init__(self, config: dict[str, Any], runtime: RouterRuntime) -> None:
        self.config = config
        self.runtime = runtime

    @abstractmethod
    def win_rate(self, prompts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Probability, per prompt, that the strong model's answer beats the weak one's. Batched."""

    @classmethod
    @abstractmethod
    def train(cls, data: Sequence[Preference], runtime: RouterRuntime, options: TrainOptions) -> Router:
        """Fit on preference rows."""

    def tensors(self) -> dict[str, Any]:
        """The learned weights (torch tensors); empty for routers that learn nothing."""
        return {}

    @classmethod
    def from_tensors(cls, config: dict[str, Any], tensors: dict[str, Any], runtime: RouterRuntime) -> Router:
        return cls(config, runtime)

    def save(self, out_dir: Path) -> str:
        """Write config.json (+ model.safetensors); returns the version (content hash)."""
        from safetensors.torch import save_file

        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = self.tensors()
        if tensors:
            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out_dir / WEIGHTS_FILE))
        (out_dir / CONFIG_FILE).write_text(json.dumps({"router": self.name, **self.config}, indent=2) + "\n")
        return version_of(out_dir)


def version_of(path: Path) -> str:
    """A short content hash of a saved router: the same weights give the same version anywhere."""
    digest = hashlib.sha256()
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        file = path / name
        if file.exists():
            digest.update(name.encode())
            digest.update(file.read_bytes())
    return digest.hexdigest()[:12]
