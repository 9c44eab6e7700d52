"""Dollar cost of a call from its usage tokens and the price table in settings."""

from __future__ import annotations

import json

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


def cost_bound(body: dict, price: Price, default_max_tokens: int) -> float:
    """An upper bound of one call's cost: a token covers at least one UTF-8 byte of the prompt, and the answer
    stops at `max_tokens` (or `max_completion_tokens`)."""
    prompt_tokens = 0
    for message in body.get("messages", []):
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content or "")
        prompt_tokens += len(text.encode("utf-8")) + MESSAGE_OVERHEAD_TOKENS
    completion = body.get("max_completion_tokens") or body.get("max_tokens") or default_max_tokens
    return cost_usd(price, prompt_tokens, int(completion))
