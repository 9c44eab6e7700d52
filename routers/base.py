"""What every router is: `win_rate(prompts)` plus save/load as safetensors + a JSON config.

A router's settings are a frozen dataclass, its `config_class` (one field per setting, each with why its
default is what it is). `config_from_params` is the one place where settings from outside, `--param
key=value` or a saved config.json, become that dataclass: an unknown key or a value of the wrong type is an
`InvalidInput` naming the key.

config.json is flat, in the layout every version has written and read:
`{"router": name, <settings>, <learned state>, "train": <what training recorded>}`. The learned state is
what scoring needs besides the weights (a group prior, a width); each router writes it in `learned()` and
reads it back in `restore()`.

This module is imported by the front doors (CLI, API, worker), so it must not import torch: the embedding
helpers reach the ML stack only when called.
"""

from __future__ import annotations

import hashlib
import json
import math
import types
import typing
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Generic, Literal, TypeVar

import numpy as np

from routers.embeddings import Embedder
from routers.rows import Preference
from routeyard.errors import InvalidInput

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"

ConfigT = TypeVar("ConfigT")


@dataclass(frozen=True)
class RouterRuntime:
    """Where and how a router runs; not part of what it learned."""

    device: str = "auto"
    cache_dir: Path | None = None
    batch_size: int = 64
    # How the default encoder runs: "auto" (ONNX Runtime int8 on a CPU, PyTorch on a GPU), "torch" or "onnx".
    encoder_backend: str = "auto"


@dataclass
class TrainOptions:
    seed: int = 0
    epochs: int | None = None  # None: the router's own default
    params: dict[str, object] = field(default_factory=dict)  # `--param key=value`: settings of the router's config
    progress: Callable[[str, int, int], None] | None = None  # (stage, done, total)
    # Groups whose rows are the user's own traffic (e.g. stored feedback): routers that can, weight them up.
    focus_groups: frozenset[str] = frozenset()

    def settings(self) -> dict[str, object]:
        """`params`, with `epochs` when given (it is a setting too: routers without one refuse it)."""
        return {**self.params, "epochs": self.epochs} if self.epochs is not None else dict(self.params)


# --- Settings: outside values -> the router's config dataclass ------------------------------------------------


class _Mismatch(Exception):
    """A value that is not of one member of a setting's type (the next member is tried)."""


def config_from_params(config_class: type[ConfigT], params: Mapping[str, object], router: str = "") -> ConfigT:
    """`config_class` with the settings in `params` over its defaults, each coerced to its field's type (a JSON
    number to float or int, "1e-4" to 1e-4). An unknown key, or a value the type does not take, is an
    `InvalidInput` naming the key and the valid ones."""
    names = [f.name for f in fields(config_class)]  # type: ignore[arg-type]
    where = f" of router {router!r}" if router else ""
    unknown = [key for key in params if key not in names]
    if unknown:
        raise InvalidInput(f"unknown setting {', '.join(map(repr, unknown))}{where}; valid settings: "
                           f"{', '.join(names)}")
    hints = typing.get_type_hints(config_class)
    values = {}
    for key, value in params.items():
        try:
            values[key] = _coerce(value, hints[key])
        except _Mismatch:
            raise InvalidInput(f"setting {key!r}{where}: {value!r} is not {_describe(hints[key])}") from None
    return config_class(**values)


def config_from_saved(config_class: type[ConfigT], saved: Mapping[str, Any], router: str = "") -> ConfigT:
    """The settings of a saved config.json. Its other keys are not settings (learned state, the training
    record, settings an older version had, such as linear's `focus_weight`) and are left to the router."""
    names = {f.name for f in fields(config_class)}  # type: ignore[arg-type]
    return config_from_params(config_class, {k: v for k, v in saved.items() if k in names}, router)


def _members(hint: Any) -> tuple[Any, ...]:
    return typing.get_args(hint) if typing.get_origin(hint) in (typing.Union, types.UnionType) else (hint,)


def _coerce(value: object, hint: Any) -> object:
    for member in _members(hint):
        try:
            return _coerce_one(value, member)
        except _Mismatch:
            continue
    raise _Mismatch


def _coerce_one(value: object, member: Any) -> object:
    if member is type(None):
        if value is None:
            return None
    elif typing.get_origin(member) is Literal:
        if value in typing.get_args(member):
            return value
    elif member is bool:
        if isinstance(value, bool):
            return value
    elif member is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, str):
            try:
                return int(value.strip())
            except ValueError:
                pass
    elif member is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
        if isinstance(value, str):
            try:
                number = float(value.strip())
            except ValueError:
                number = math.nan
            if math.isfinite(number):
                return number
    elif member is str:
        if isinstance(value, str):
            return value
    else:  # a config field of a type this helper does not know: a bug in the config class
        raise TypeError(f"config fields must be bool, int, float, str, a Literal or None; got {member!r}")
    raise _Mismatch


def _describe(hint: Any) -> str:
    words = {bool: "true or false", int: "an integer", float: "a number", str: "text", type(None): "null"}
    parts = [" or ".join(map(repr, typing.get_args(m))) if typing.get_origin(m) is Literal else words.get(m, str(m))
             for m in _members(hint)]
    return " or ".join(parts)


# --- Embedding the training rows ------------------------------------------------------------------------------


def embedder_for(encoder: str, runtime: RouterRuntime, layers: bool = False) -> Embedder:
    return Embedder(encoder, cache_dir=runtime.cache_dir, device=runtime.device, batch_size=runtime.batch_size,
                    layers=layers, backend=runtime.encoder_backend, export_dir=runtime.cache_dir)


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


# --- The router -----------------------------------------------------------------------------------------------


class Router(ABC, Generic[ConfigT]):
    """Scores prompts with the probability that the strong model is needed (its answer would win)."""

    name: ClassVar[str]
    config_class: ClassVar[type]  # the frozen dataclass of this router's settings
    learns: ClassVar[bool] = True  # False: usable by name with no checkpoint (random)

    def __init__(self, config: ConfigT, runtime: RouterRuntime) -> None:
        self.config = config
        self.runtime = runtime
        # What training recorded (rows, data hash, seed, validation scores): config.json's "train", a report for
        # people and for retraining's bookkeeping; scoring never reads it.
        self.trained: dict[str, Any] = {}

    @classmethod
    def configure(cls, options: TrainOptions) -> ConfigT:
        """This router's settings for a training run: its defaults, overridden by `--param`s and `epochs`."""
        return config_from_params(cls.config_class, options.settings(), cls.name)

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

    def learned(self) -> dict[str, Any]:
        """What scoring needs besides the settings and the weights, as JSON (config.json's middle keys)."""
        return {}

    @classmethod
    def restore(cls, config: ConfigT, saved: Mapping[str, Any], tensors: dict[str, Any],
                runtime: RouterRuntime) -> Router:
        """The router from its settings, the rest of its config.json (`saved`) and its weights."""
        return cls(config, runtime)

    @classmethod
    def from_saved(cls, saved: Mapping[str, Any], tensors: dict[str, Any], runtime: RouterRuntime) -> Router:
        """The router from the contents of its config.json (less "router") and model.safetensors."""
        router = cls.restore(config_from_saved(cls.config_class, saved, cls.name), saved, tensors, runtime)
        router.trained = dict(saved.get("train") or {})
        return router

    def to_json(self) -> dict[str, Any]:
        """config.json's contents: the router's name, its settings, its learned state, its training record."""
        out = {"router": self.name, **asdict(self.config), **self.learned()}  # type: ignore[call-overload]
        if self.trained:
            out["train"] = self.trained
        return out

    def save(self, out_dir: Path) -> str:
        """Write config.json (+ model.safetensors); returns the version (content hash)."""
        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = self.tensors()
        if tensors:
            # Imported here, not above: the front doors import this module and must start without torch (a
            # router with no weights, random, saves without it).
            from safetensors.torch import save_file

            save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(out_dir / WEIGHTS_FILE))
        (out_dir / CONFIG_FILE).write_text(json.dumps(self.to_json(), indent=2) + "\n")
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
