"""Matrix factorization router (RouteLLM section 4.1, "MF").

Each model has a learned vector v_m; a prompt's embedding e(q) is projected to the same space; the
model's score is s(m, q) = w . (v_m/|v_m| * W e(q)) and P(strong beats weak | q) = sigmoid(s(strong, q) -
s(weak, q) + b). Trained with binary cross-entropy on preference labels (ties as 0.5).

Group-robust (routers/groups.py): trained with one free bias per group of rows, so the factorisation learns
what separates prompts within a group; unseen prompts get the group prior learned from those biases.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from routers.base import Router, RouterRuntime, TrainOptions, embed_rows, embedder_for
from routers.embeddings import DEFAULT_ENCODER
from routers.groups import GroupPrior, group_ids, win_probability
from routers.rows import Preference, data_hash


@dataclass(frozen=True)
class MFConfig:
    # The frozen sentence encoder the factorisation reads; MiniLM ships offline and is fast on a CPU. Scoring
    # must use the encoder training used, so it is saved with the router.
    encoder: str = DEFAULT_ENCODER
    # Width of the shared model/prompt space, the paper's 128: wider has more room to memorise a benchmark's
    # few thousand rows, narrower less room for what separates prompts within a group.
    dim: int = 128
    # Passes over the rows: more fit the training rows closer (and memorise them sooner). Each pass over
    # cached embeddings is cheap; the shipped checkpoint used 20.
    epochs: int = 20
    # AdamW's step size; with `epochs` it sets how far training moves from the random start.
    lr: float = 3e-3
    # L2 on the factorisation (not on the group biases): keeps the projection from fitting single prompts,
    # light enough that the within-group signal survives.
    weight_decay: float = 1e-4
    # Rows per step: large batches keep the gradient steady when many labels are ties (0.5); steps are cheap.
    batch_size: int = 256


class MFModule(nn.Module):
    """logit(strong beats weak | prompt embedding); the state dict's names are what checkpoints hold."""

    def __init__(self, text_dim: int, dim: int) -> None:
        super().__init__()
        self.P = nn.Embedding(2, dim)  # 0: strong, 1: weak
        self.text_proj = nn.Linear(text_dim, dim, bias=False)
        self.classifier = nn.Linear(dim, 1, bias=False)
        self.bias = nn.Parameter(torch.zeros(1))

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        models = nn.functional.normalize(self.P.weight, dim=-1)
        q = self.text_proj(emb)
        strong = self.classifier(models[0] * q).squeeze(-1)
        weak = self.classifier(models[1] * q).squeeze(-1)
        return strong - weak + self.bias


class MFRouter(Router[MFConfig]):
    name = "mf"
    config_class = MFConfig

    def __init__(self, config: MFConfig, runtime: RouterRuntime, module: MFModule, prior: GroupPrior,
                 text_dim: int) -> None:
        super().__init__(config, runtime)
        self.embedder = embedder_for(config.encoder, runtime)
        self.module = module
        self.prior = prior  # the logit offset of an unseen group, from the per-group biases training learned
        self.text_dim = text_dim  # the encoder's width, which the module's projection reads

    def tensors(self) -> dict[str, Any]:
        return dict(self.module.state_dict())

    def learned(self) -> dict[str, Any]:
        return {"text_dim": self.text_dim, "group_prior": self.prior.to_config()}

    @classmethod
    def restore(cls, config: MFConfig, saved: Mapping[str, Any], tensors: dict[str, Any],
                runtime: RouterRuntime) -> MFRouter:
        text_dim = int(saved["text_dim"])
        module = MFModule(text_dim, config.dim)
        module.load_state_dict(tensors)
        module.eval()
        return cls(config, runtime, module, GroupPrior.from_config(saved.get("group_prior")), text_dim)

    def win_rate(self, prompts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        emb = self.embedder.embed(prompts, progress=progress)
        with torch.inference_mode():
            logits = self.module(torch.from_numpy(emb)).double().numpy()
        return win_probability(logits, prompts, self.prior)

    @classmethod
    def train(cls, data: Sequence[Preference], runtime: RouterRuntime, options: TrainOptions) -> MFRouter:
        config = cls.configure(options)
        x = torch.from_numpy(embed_rows(config.encoder, data, runtime, options))
        y = torch.tensor([r.label for r in data], dtype=torch.float32)
        torch.manual_seed(options.seed)
        module = MFModule(int(x.shape[1]), config.dim)
        names, ids = group_ids([r.group for r in data])
        gid = torch.from_numpy(ids)
        group_bias = torch.nn.Parameter(torch.zeros(len(names)))
        groups: list[dict[str, Any]] = [{"params": module.parameters()}, {"params": [group_bias], "weight_decay": 0.0}]
        opt = torch.optim.AdamW(groups, lr=config.lr, weight_decay=config.weight_decay)
        loss_fn = torch.nn.BCEWithLogitsLoss()
        gen = torch.Generator().manual_seed(options.seed)
        module.train()
        for epoch in range(config.epochs):
            for idx in torch.randperm(len(y), generator=gen).split(config.batch_size):
                opt.zero_grad()
                loss = loss_fn(module(x[idx]) + group_bias[gid[idx]], y[idx])
                loss.backward()
                opt.step()
            if options.progress:
                options.progress("train", epoch + 1, config.epochs)
        module.eval()
        prior = GroupPrior.fit(group_bias.detach().double().numpy(), ids, [r.prompt for r in data])
        router = cls(config, runtime, module, prior, int(x.shape[1]))
        router.trained = {"rows": len(data), "data_hash": data_hash(data), "seed": options.seed,
                          "final_loss": float(loss.detach())}
        return router
