"""Fine-tuning and batched inference for the transformer classifiers (bert, causal_llm).

One logit per prompt, trained with binary cross-entropy on the preference label (ties as 0.5), so every
router's output means the same thing. Inference sorts prompts by length so batches carry little padding.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from transformers import get_linear_schedule_with_warmup

from routers.base import ConfigT, Router, RouterRuntime
from routers.embeddings import resolve_device
from routeyard.errors import InvalidInput


@dataclass(frozen=True)
class FitOptions:
    epochs: int
    lr: float
    batch_size: int
    max_length: int
    weight_decay: float = 0.01
    warmup: float = 0.1  # share of steps with a rising learning rate
    seed: int = 0


def logits(model: Any, tokenizer: Any, texts: Sequence[str], batch_size: int, max_length: int,
           device: str, progress: Callable[[int], None] | None = None) -> np.ndarray:
    order = np.argsort([len(t) for t in texts], kind="stable")
    out = np.empty(len(texts), dtype=np.float64)
    model.eval()
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            idx = order[start : start + batch_size]
            enc = tokenizer([texts[i] for i in idx], padding=True, truncation=True, max_length=max_length,
                            return_tensors="pt").to(device)
            out[idx] = model(**enc).logits.squeeze(-1).float().cpu().numpy()
            if progress:
                progress(len(idx))
    return out


def fit(model: Any, tokenizer: Any, texts: Sequence[str], labels: Sequence[float], opts: FitOptions, device: str,
        progress: Callable[[str, int, int], None] | None = None, offsets: Sequence[float] | None = None) -> float:
    """Train the parameters of `model` that require grad; returns the last epoch's mean loss. `offsets` are
    fixed per-row additions to the logit (group biases, routers/groups.py)."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=opts.lr, weight_decay=opts.weight_decay)
    steps = opts.epochs * ((len(texts) + opts.batch_size - 1) // opts.batch_size)
    schedule = get_linear_schedule_with_warmup(optimizer, int(opts.warmup * steps), max(steps, 1))
    loss_fn = torch.nn.BCEWithLogitsLoss()
    y = torch.tensor(labels, dtype=torch.float32)
    shift = torch.tensor(offsets if offsets is not None else [0.0] * len(texts), dtype=torch.float32)
    gen = torch.Generator().manual_seed(opts.seed)
    step, mean = 0, 0.0
    model.train()
    for _ in range(opts.epochs):
        total = 0.0
        for idx in torch.randperm(len(texts), generator=gen).split(opts.batch_size):
            enc = tokenizer([texts[i] for i in idx.tolist()], padding=True, truncation=True,
                            max_length=opts.max_length, return_tensors="pt").to(device)
            logit = model(**enc).logits.squeeze(-1).float() + shift[idx].to(device)
            loss = loss_fn(logit, y[idx].to(device))
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            optimizer.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
            step += 1
            if progress:
                progress("train", step, steps)
        mean = total / len(texts)
    model.eval()
    return mean


def trainable_state(model: Any) -> dict[str, Any]:
    """Only what training changed: a head on a frozen base saves kilobytes, not the whole base model."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {k: v for k, v in model.state_dict().items() if k in names}


def load_trained(model: Any, tensors: dict[str, Any], base: str) -> Any:
    """Put saved (trained) parameters into a freshly built base model."""
    unknown = set(tensors) - set(model.state_dict())
    if unknown:
        raise InvalidInput(f"router weights do not fit base {base!r}: {sorted(unknown)[:3]}")
    model.load_state_dict(tensors, strict=False)
    return model.eval()


class ClassifierRouter(Router[ConfigT]):
    """A router that is a transformers sequence classifier (bert, causal_llm): the model and tokenizer are
    built from a base model named by the config's `base` (`build`), and only the trained parameters are saved
    on top of it."""

    def __init__(self, config: ConfigT, runtime: RouterRuntime, model: Any, tokenizer: Any) -> None:
        super().__init__(config, runtime)
        self.model, self.tokenizer = model, tokenizer
        self.device = resolve_device(runtime.device)

    @classmethod
    @abstractmethod
    def build(cls, config: ConfigT, device: str) -> tuple[Any, Any]:
        """(model, tokenizer) from the base model, shaped as `config` says, nothing trained yet."""

    def tensors(self) -> dict[str, Any]:
        return trainable_state(self.model)

    @classmethod
    def start_training(cls, config: ConfigT, runtime: RouterRuntime, seed: int) -> tuple[str, Any, Any]:
        """(device, model, tokenizer) for a seeded training run from the base model."""
        torch.manual_seed(seed)
        device = resolve_device(runtime.device)
        model, tokenizer = cls.build(config, device)
        return device, model, tokenizer

    @classmethod
    def load_model(cls, config: ConfigT, tensors: dict[str, Any], runtime: RouterRuntime) -> tuple[Any, Any]:
        """(model, tokenizer) of a saved router: the base, with the saved (trained) parameters put in."""
        model, tokenizer = cls.build(config, resolve_device(runtime.device))
        return load_trained(model, tensors, config.base), tokenizer  # type: ignore[attr-defined]
