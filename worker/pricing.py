"""Dollar cost of a call from its usage tokens and the price table in settings."""

from __future__ import annotations

from routeyard.settings import Price


class UnknownPriceError(ValueError):
    pass


def price_for(model: str, table: dict[str, Price]) -> Price:
    try:
        return table[model]
    except KeyError:
        raise UnknownPriceError(
            f"no price for model {model!r}; add it to ROUTEYARD_PRICING, e.g. "
            f"ROUTEYARD_PRICING='{{\"{model}\": {{\"input\": 0.5, \"output\": 1.5}}}}' (dollars per 1M tokens)"
        ) from None


def cost_usd(price: Price, prompt_tokens: int, completion_tokens: int) -> float:
    return (prompt_tokens * price.input + completion_tokens * price.output) / 1_000_000
