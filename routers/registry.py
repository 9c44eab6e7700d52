"""The one registry of routers, and loading a router from a name, a local directory or a hub id."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from routers.base import CONFIG_FILE, WEIGHTS_FILE, Router, RouterRuntime, TrainOptions, version_of
from routers.bert import BertRouter
from routers.causal_llm import CausalLLMRouter
from routers.data import Preference
from routers.linear import LinearRouter
from routers.mf import MFRouter
from routers.random_router import RandomRouter
from routers.sw_ranking import SWRankingRouter

ROUTERS: dict[str, type[Router]] = {
    cls.name: cls for cls in (RandomRouter, SWRankingRouter, MFRouter, BertRouter, CausalLLMRouter, LinearRouter)
}

# What `router train`, retraining and `serving` (before any promotion) use when no router is named.
DEFAULT_ROUTER = "linear"

# Checkpoints shipped with the package, trained on the RouteLLM MMLU + GSM8K outcomes (see benchmarks/).
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


@dataclass(frozen=True)
class LoadedRouter:
    router: Router
    name: str  # registry name
    version: str  # content hash of the saved files
    source: str  # what the user asked for

    @property
    def label(self) -> str:
        """What items record: `mf@cd63313ce1f1`."""
        return f"{self.name}@{self.version}"


def _resolve(spec: str) -> Path | None:
    """A directory for `spec`, or None for a registry name with nothing to load (e.g. random)."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return path
    if spec in ROUTERS:
        shipped = PRETRAINED_DIR / spec
        if shipped.is_dir() or not ROUTERS[spec].learns:
            return shipped if shipped.is_dir() else None
        raise ValueError(f"router {spec!r} ships no checkpoint (only {DEFAULT_ROUTER!r} does): train one with "
                         f"`routeyard router train --router {spec} --data ... --out DIR` and pass DIR")
    if spec.count("/") == 1 and not path.exists():
        from huggingface_hub import snapshot_download  # a hub id, for users with the internet

        return Path(snapshot_download(repo_id=spec, allow_patterns=[CONFIG_FILE, WEIGHTS_FILE]))
    raise ValueError(f"unknown router {spec!r}: not a directory, not one of {sorted(ROUTERS)}, not a hub id")


def load_router(spec: str, runtime: RouterRuntime | None = None) -> LoadedRouter:
    runtime = runtime or RouterRuntime()
    path = _resolve(spec)
    if path is None:
        cls = ROUTERS[spec]
        return LoadedRouter(cls({}, runtime), cls.name, "default", spec)
    config = json.loads((path / CONFIG_FILE).read_text())
    name = config.pop("router", None)
    if name not in ROUTERS:
        raise ValueError(f"{path / CONFIG_FILE}: field 'router' must be one of {sorted(ROUTERS)}, got {name!r}")
    tensors = {}
    if (path / WEIGHTS_FILE).exists():
        from safetensors.torch import load_file

        tensors = load_file(str(path / WEIGHTS_FILE))
    router = ROUTERS[name].from_tensors(config, tensors, runtime)
    return LoadedRouter(router, name, version_of(path), spec)


def train_router(name: str, data: Sequence[Preference], runtime: RouterRuntime | None = None,
                 options: TrainOptions | None = None) -> Router:
    if name not in ROUTERS:
        raise ValueError(f"unknown router {name!r}; choose one of {sorted(ROUTERS)}")
    if not data:
        raise ValueError("no preference rows to train on")
    return ROUTERS[name].train(data, runtime or RouterRuntime(), options or TrainOptions())
