"""Dollar cost of a call from its usage tokens and the price table in settings."""

from __future__ import annotations

import json
from typing import Any

from routeyard.errors import UnknownPrice
from routeyard.settings import Price


def price_for(model: str, table: dict[str, Price]) -> Price:
    try:
        return table[model]
    except KeyError:
        raise UnknownPrice(
            f"no price for model {model!r}; add it to ROUTEYARD_PRICING, e.g. "
            f"ROUTEYARD_PRICING='{{\"{model}\": {{\"input\": 0.5, \"output\": 1.5}}}}' (dollars per 1M tokens)"
        ) from None


def cost_usd(price: Price, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000


MESSAGE_OVERHEAD_TOKENS = 8  # role and separators a chat template adds per message
IMAGE_TOKENS_BOUND = 3_000  # the most one image part costs on current OpenAI models (high detail, largest size)
PROMPT_FIELDS = ("tools", "functions", "response_format", "tool_choice", "function_call")  # billed as input
UNBOUNDED_PARTS = ("input_audio", "file")  # billed by duration or pages: no bound from the request alone


class Unbounded(ValueError):
    """A request whose cost cannot be bounded from the request alone (audio, files)."""


def cost_bound(body: dict[str, Any], price: Price, default_max_tokens: int) -> float:
    """An upper bound of one call's cost, from the request alone.

    Input: a token covers at least one UTF-8 byte, so every byte the request sends as text counts as a token:
    each message as JSON (role, name, tool calls and content parts included) plus a chat template's overhead,
    the tool and function schemas, the response format's schema; an image part counts IMAGE_TOKENS_BOUND.
    Output: each of the `n` choices stops at `max_completion_tokens` (which includes reasoning tokens) or
    `max_tokens`, whichever is larger when both are given; a predicted output's tokens may be billed as
    completion too. Raises Unbounded for parts billed by duration or pages."""
    prompt_tokens = 0
    for message in body.get("messages", []):
        content = message.get("content")
        parts = content if isinstance(content, list) else []
        for part in parts:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind in UNBOUNDED_PARTS:
                raise Unbounded(f"a {kind!r} content part is billed by its length, which the request does not say")
            if kind == "image_url":
                prompt_tokens += IMAGE_TOKENS_BOUND
        prompt_tokens += _bytes(message) + MESSAGE_OVERHEAD_TOKENS
    prompt_tokens += sum(_bytes(body[k]) for k in PROMPT_FIELDS if body.get(k) is not None)
    caps = [int(body[k]) for k in ("max_completion_tokens", "max_tokens") if body.get(k)]
    choices = int(body.get("n") or 1)
    completion_tokens = (max(caps) if caps else default_max_tokens) * choices
    if body.get("prediction") is not None:
        completion_tokens += _bytes(body["prediction"]) * choices
    return cost_usd(price, prompt_tokens, completion_tokens)


def _bytes(value: Any) -> int:
    return len((value if isinstance(value, str) else json.dumps(value, ensure_ascii=False)).encode("utf-8"))
