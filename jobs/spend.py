"""Spend reports: per model calls, tokens and dollars, and the saving against sending everything strong."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from db import queries
from routeyard.settings import Settings
from worker.pricing import cost_usd, price_for


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
    calls: int
    cost_usd: float
    all_strong_cost_usd: float  # the same calls, all sent to the strong model
    saving_usd: float
    saving_pct: float
    strong_share: float  # of the calls made

    def to_dict(self) -> dict:
        return asdict(self)


def spend_report(session: Session, settings: Settings, job_id: str | None = None,
                 since: datetime | None = None, tenant_id: str | None = None) -> SpendReport:
    """The all-strong estimate prices each weak call's tokens at the strong model's rates: the same prompt,
    and an answer of the same length (strong models tend to write longer, so the saving is if anything low)."""
    if job_id is not None:
        queries.get_job(session, job_id, tenant_id)  # a clear error for an unknown (or another tenant's) job
    merged: dict[tuple[str, str], ModelSpend] = {}
    all_strong = 0.0
    for row in queries.spend_rows(session, job_id, since, tenant_id):
        if row.tier == "strong":
            all_strong += row.cost_usd
        else:
            all_strong += cost_usd(price_for(row.strong_model, settings.price_table), row.prompt_tokens,
                                   row.completion_tokens)
        key = (row.tier, row.model)
        prev = merged.get(key)
        merged[key] = ModelSpend(row.tier, row.model, row.calls + (prev.calls if prev else 0),
                                 row.prompt_tokens + (prev.prompt_tokens if prev else 0),
                                 row.completion_tokens + (prev.completion_tokens if prev else 0),
                                 row.cost_usd + (prev.cost_usd if prev else 0.0))
    models = sorted(merged.values(), key=lambda m: (m.tier != "strong", m.model))
    calls = sum(m.calls for m in models)
    total = sum(m.cost_usd for m in models)
    strong_calls = sum(m.calls for m in models if m.tier == "strong")
    saving = all_strong - total
    return SpendReport(job_id, models, calls, total, all_strong, saving,
                       100.0 * saving / all_strong if all_strong else 0.0,
                       strong_calls / calls if calls else 0.0)
