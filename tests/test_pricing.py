"""Prices come from the operator's table first, then the maintained list (genai-prices), offline."""

from __future__ import annotations

import pytest

from routeyard.errors import UnknownPrice
from routeyard.pricing import cost_usd, listed_price, price_for
from routeyard.settings import Price


def test_a_model_the_old_table_lacked_is_priced_from_the_maintained_list():
    price = price_for("gpt-4.1", {})
    assert price.input > 0 and price.output > price.input  # output tokens cost more on every OpenAI chat model
    assert price.batch_discount == 0.5  # OpenAI's Batch API bills half
    mini = price_for("gpt-4.1-mini", {})
    assert mini.input < price.input and mini.output < price.output


def test_the_operators_table_wins_over_the_list():
    mine = Price(input=1.0, output=2.0)
    assert price_for("gpt-4o", {"gpt-4o": mine}) == mine
    assert price_for("gpt-4o", {}) != mine


def test_a_tiered_model_gets_its_short_prompt_price():
    """Cost is charged per call at the tier a normal prompt pays, never the long-context tier."""
    from genai_prices import Usage, calc_price

    price = listed_price("gemini-2.5-pro")
    assert price is not None
    long_prompt = calc_price(Usage(input_tokens=300_000, output_tokens=0), "gemini-2.5-pro").input_price
    assert price.input < float(long_prompt) / 300_000 * 1_000_000  # above 200k tokens the tier costs more
    assert cost_usd(price, 1_000, 0) == pytest.approx(price.input / 1_000)


def test_a_model_nobody_lists_is_refused_with_how_to_price_it():
    with pytest.raises(UnknownPrice, match=r"'my-local-llama'.*ROUTEYARD_PRICING"):
        price_for("my-local-llama", {})
    assert price_for("my-local-llama", {"my-local-llama": Price(input=0, output=0)}).input == 0
