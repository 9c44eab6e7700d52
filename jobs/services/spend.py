"""Spend reports: per model calls, tokens and dollars, and the saving against sending everything strong."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from db import jobs as store
from db.spend import Period, SpendFilter, SpendRow, spend_rows, unanswered_spend
from routeyard.errors import InvalidInput
from routeyard.pricing import batch_price, cost_usd, price_for
from routeyard.settings import Settings

EXTRA_TIERS = ("shadow", "judge")  # spend on top of the routed calls: shadow calls and the judge's


@dataclass(frozen=True)
class ModelSpend:
    tier: str
    model: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


@dataclass(frozen=True)
class SpendReport:
    job_id: str | None
    models: list[ModelSpend]
    calls: int  # the routed calls (strong and weak): what the strong share and the all-strong estimate are of
    cost_usd: float  # every row's: the routed calls, and the shadow and judge calls on top
    all_strong_cost_usd: float  # the same calls, all sent to the strong model (shadow calls are extra spend)
    saving_usd: float
    saving_pct: float
    strong_share: float  # of the calls made
    # Requests that got no answer (timeouts): in no item's cost, but a provider may have billed them; at most:
    unanswered_requests: int = 0
    unanswered_cost_bound_usd: float = 0.0
    # the same calls all sent to the strong model through its provider's Batch API (None: it has no batch price),
    # and the saving against that: what routing saves over the cheapest way to run a whole batch on the strong one
    all_strong_batch_cost_usd: float | None = None
    saving_vs_batch_pct: float | None = None
    all_calls: int = 0  # every row's calls, shadow and judge included: the total that cost_usd is the cost of

    def to_dict(self) -> dict:
        return asdict(self)


def spend_report(session: Session, settings: Settings, job_id: str | None = None,
                 since: datetime | None = None, tenant_id: str | None = None, tag: str | None = None) -> SpendReport:
    """The all-strong estimate prices each weak call's tokens at the strong model's rates: the same prompt,
    and an answer of the same length (strong models tend to write longer, so the saving is if anything low)."""
    if job_id is not None:
        store.get_job(session, job_id, tenant_id)  # a clear error for an unknown (or another tenant's) job
    merged: dict[tuple[str, str], ModelSpend] = {}
    all_strong = 0.0
    all_strong_batch: float | None = 0.0
    for row in spend_rows(session, SpendFilter(job_id=job_id, tenant_id=tenant_id, tag=tag, since=since)):
        all_strong += _all_strong_cost(row, settings)
        if all_strong_batch is not None and row.tier in ("strong", "weak"):
            strong_price = price_for(row.strong_model, settings.price_table)
            all_strong_batch = (None if strong_price.batch_discount is None else all_strong_batch + cost_usd(
                batch_price(strong_price), row.prompt_tokens, row.completion_tokens))
        key = (row.tier, row.model)
        prev = merged.get(key)
        merged[key] = ModelSpend(row.tier, row.model, row.calls + (prev.calls if prev else 0),
                                 row.prompt_tokens + (prev.prompt_tokens if prev else 0),
                                 row.completion_tokens + (prev.completion_tokens if prev else 0),
                                 row.cost_usd + (prev.cost_usd if prev else 0.0))
    models = sorted(merged.values(), key=lambda m: ({"strong": 0, "weak": 1, "shadow": 2}.get(m.tier, 3), m.model))
    calls = sum(m.calls for m in models if m.tier not in EXTRA_TIERS)
    total = sum(m.cost_usd for m in models)
    strong_calls = sum(m.calls for m in models if m.tier == "strong")
    saving = all_strong - total
    lost = unanswered_spend(session, SpendFilter(job_id=job_id, tenant_id=tenant_id, tag=tag, since=since))
    return SpendReport(job_id, models, calls, total, all_strong, saving,
                       100.0 * saving / all_strong if all_strong else 0.0,
                       strong_calls / calls if calls else 0.0, lost.requests, lost.cost_bound_usd, all_strong_batch,
                       100.0 * (all_strong_batch - total) / all_strong_batch if all_strong_batch else None,
                       sum(m.calls for m in models))


@dataclass(frozen=True)
class PeriodSpend:
    period: str
    calls: int
    strong_calls: int
    cost_usd: float
    strong_cost_usd: float
    weak_cost_usd: float
    all_strong_cost_usd: float
    saving_usd: float
    by_model: dict[str, float]  # model -> dollars
    by_tag: dict[str, float]  # tag ("" for none) -> dollars


def _all_strong_cost(row: SpendRow, settings: Settings) -> float:
    """What the row's calls would have cost on the strong model; shadow and judge calls are extra spend, not
    routed."""
    if row.tier in ("strong", "weak"):  # at the list price: a strong call made in a provider batch cost less
        return cost_usd(price_for(row.strong_model, settings.price_table), row.prompt_tokens, row.completion_tokens)
    return 0.0


def spend_over_time(session: Session, settings: Settings, period: Period = "day", tag: str | None = None,
                    tenant_id: str | None = None) -> list[PeriodSpend]:
    """Spend per day or week, per model and per job tag, with the saving against all-strong (as spend_report)."""
    if period not in ("day", "week"):
        raise InvalidInput(f"--by must be day or week, got {period!r}")
    buckets: dict[str, dict] = {}
    for row in spend_rows(session, SpendFilter(tenant_id=tenant_id, tag=tag), period):
        assert row.period is not None
        b = buckets.setdefault(row.period, {"calls": 0, "strong_calls": 0, "cost": 0.0, "strong": 0.0, "weak": 0.0,
                                            "all_strong": 0.0, "by_model": {}, "by_tag": {}})
        b["cost"] += row.cost_usd
        b["all_strong"] += _all_strong_cost(row, settings)
        b["by_model"][row.model] = b["by_model"].get(row.model, 0.0) + row.cost_usd
        b["by_tag"][row.tag or ""] = b["by_tag"].get(row.tag or "", 0.0) + row.cost_usd
        if row.tier in EXTRA_TIERS:  # spend, but not a routed call
            continue
        b["calls"] += row.calls
        if row.tier == "strong":
            b["strong_calls"] += row.calls
            b["strong"] += row.cost_usd
        else:
            b["weak"] += row.cost_usd
    return [PeriodSpend(p, b["calls"], b["strong_calls"], b["cost"], b["strong"], b["weak"], b["all_strong"],
                        b["all_strong"] - b["cost"], b["by_model"], b["by_tag"]) for p, b in sorted(buckets.items())]
