"""Matrix factorization router (RouteLLM section 4.1, "MF").

Each model has a learned vector v_m; a prompt's embedding e(q) is projected to the same space; the
model's score is s(m, q) = w . (v_m/|v_m| * W e(q)) and P(strong beats weak | q) = sigmoid(s(strong, q) -
s(weak, q) + b). Trained with binary cross-entropy on preference labels (ties as 0.5).

Group-robust (routers/groups.py): trained with one free bias per group of rows, so the factorisation learns
what separates prompts within a group; unseen prompts get the group prior learned from those biases.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from routers.base import Router, RouterRuntime, TrainOptions, embed_rows, embedder_for
from routers.data import Preference, data_hash
from routers.embeddings import DEFAULT_ENCODER
from routers.groups import GroupPrior, group_ids, win_probability

DEFAULTS: dict[str, Any] = {"encoder": DEFAULT_ENCODER, "dim": 128, "epochs": 20, "lr": 3e-3,
                            "weight_decay": 1e-4, "batch_size": 256}


def _module(text_dim: int, dim: int):  # noqa: ANN202 - torch is imported lazily
    import torch
    from torch import nn

    class MF(nn.Module):
        def __init__(self) -> None:
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

    return MF()


class MFRouter(Router):
    name = "mf"

    def __init__(self, config: dict[str, Any], runtime: RouterRuntime, module: Any = None) -> None:
        super().__init__(config, runtime)
        self.embedder = embedder_for(config["encoder"], runtime)
        self.module = module

    def tensors(self) -> dict[str, Any]:
        return dict(self.module.state_dict())

    @classmethod
    def from_tensors(cls, config: dict[str, Any], tensors: dict[str, Any], runtime: RouterRuntime) -> MFRouter:
        module = _module(int(config["text_dim"]), int(config["dim"]))
        module.load_state_dict(tensors)
        module.eval()
        return cls(config, runtime, module)

    def win_rate(self, prompts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        import torch

        emb = self.embedder.embed(prompts, progress=progress)
        with torch.inference_mode():
            logits = self.module(torch.from_numpy(emb)).double().numpy()
        return win_probability(logits, prompts, self.config)

    @classmethod
    def train(cls, data: Sequence[Preference], runtime: RouterRuntime, options: TrainOptions) -> MFRouter:
        import torch

        config = options.config(DEFAULTS)
        x = torch.from_numpy(embed_rows(config["encoder"], data, runtime, options))
        y = torch.tensor([r.label for r in data], dtype=torch.float32)
        config["text_dim"] = int(x.shape[1])
        torch.manual_seed(options.seed)
        module = _module(config["text_dim"], int(config["dim"]))
        names, ids = group_ids([r.group for r in data])
        gid = torch.from_numpy(ids)
        group_bias = torch.nn.Parameter(torch.zeros(len(names)))
        opt = torch.optim.AdamW([{"params": module.parameters()}, {"params": [group_bias], "weight_decay": 0.0}],
                                lr=float(config["lr"]), weight_decay=float(config["weight_decay"]))
        loss_fn = torch.nn.BCEWithLogitsLoss()
        gen = torch.Generator().manual_seed(options.seed)
        epochs, bs = int(config["epochs"]), int(config["batch_size"])
        module.train()
        for epoch in range(epochs):
            for idx in torch.randperm(len(y), generator=gen).split(bs):
                opt.zero_grad()
                loss = loss_fn(module(x[idx]) + group_bias[gid[idx]], y[idx])
                loss.backward()
                opt.step()
            if options.progress:
                options.progress("train", epoch + 1, epochs)
        module.eval()
        config["group_prior"] = GroupPrior.fit(group_bias.detach().double().numpy(), ids,
                                               [r.prompt for r in data]).to_config()
        config["train"] = {"rows": len(data), "data_hash": data_hash(data), "seed": options.seed,
                           "final_loss": float(loss.detach())}
        return cls(config, runtime, module)
