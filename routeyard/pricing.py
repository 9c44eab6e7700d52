"""Dollar cost of a call from its usage tokens: prices from ROUTEYARD_PRICING, else the maintained list."""

from __future__ import annotations

import functools
import json
from typing import Any

from routeyard.errors import UnknownPrice
from routeyard.settings import Price


def price_for(model: str, table: dict[str, Price]) -> Price:
    """The price of `model`: the table first (ROUTEYARD_PRICING, or the prices a job was submitted with), then
    the maintained list shipped in the `genai-prices` package."""
    if model in table:
        return table[model]
    listed = listed_price(model)
    if listed is None:
        raise UnknownPrice(
            f"no price for model {model!r}: the price list (genai-prices {_list_version()}) does not know it; "
            f"add it to ROUTEYARD_PRICING, e.g. ROUTEYARD_PRICING='{{\"{model}\": {{\"input\": 0.5, "
            f"\"output\": 1.5}}}}' (dollars per 1M tokens; 0 for a model you serve yourself)")
    return listed


# Providers whose batch APIs bill half the list price (OpenAI Batch, Anthropic Message Batches, Gemini Batch
# Mode, Mistral, Groq and Together batch): genai-prices lists synchronous prices only.
BATCH_DISCOUNTS = {"openai": 0.5, "anthropic": 0.5, "google": 0.5, "mistral": 0.5, "groq": 0.5, "together": 0.5}
_PROBE_TOKENS = 1_000  # far below every price tier's threshold, so the base (short-prompt) price is read


@functools.lru_cache(maxsize=512)
def listed_price(model: str) -> Price | None:
    """The maintained list's current price for `model`, or None when the list does not know it.

    Read offline from the package's bundled snapshot (no network: upgrade the package for newer prices). A
    model priced in tiers by prompt length (some Gemini and Claude models above 200k tokens) gets its base
    tier: what nearly every prompt pays; price long-context traffic with ROUTEYARD_PRICING."""
    from genai_prices import Usage, calc_price

    try:
        calc = calc_price(Usage(input_tokens=_PROBE_TOKENS, output_tokens=_PROBE_TOKENS), model)
    except LookupError:
        return None
    per_million = 1_000_000 / _PROBE_TOKENS
    return Price(input=float(calc.input_price) * per_million, output=float(calc.output_price) * per_million,
                 batch_discount=BATCH_DISCOUNTS.get(calc.provider.id))


def _list_version() -> str:
    from importlib.metadata import version

    return version("genai-prices")


def batch_price(price: Price) -> Price:
    """The price a provider's Batch API bills: the list price less its batch discount (none known: the list)."""
    keep = 1.0 - (price.batch_discount or 0.0)
    return Price(input=price.input * keep, output=price.output * keep, batch_discount=price.batch_discount)


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
