"""What the HTTP API accepts and returns, as pydantic models, so OpenAPI documents every response."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from routeyard.states import ItemStatus, JobStatus


class Rejected(BaseModel):
    line: int
    reason: str


class SubmitResponse(BaseModel):
    job_id: str
    created: bool
    n_items: int
    rejected: list[Rejected]


class CancelResponse(BaseModel):
    job_id: str
    cancelled_items: int


class FeedbackBody(BaseModel):
    custom_id: str
    kind: Literal["prefer", "rating", "thumbs"]
    value: float = Field(ge=0.0, le=1.0, description="prefer: 1 strong, 0.5 tie, 0 weak; rating 0..1; thumbs 1/0")


class FeedbackResponse(BaseModel):
    id: int


class ResultsPage(BaseModel):
    items: list[dict[str, Any]]
    offset: int
    next_offset: int | None


class JobSummary(BaseModel):
    id: str
    status: JobStatus
    n_items: int
    tag: str | None
    created_at: datetime


class JobStatusResponse(BaseModel):
    id: str
    status: JobStatus
    tag: str | None
    source: str | None
    router: str
    router_version: str | None
    strong_fraction: float
    budget_usd: float | None
    target_pgr: float | None
    threshold: float | None
    strong_model: str
    weak_model: str
    n_items: int
    n_rejected: int
    counts: dict[ItemStatus, int]
    created_at: datetime
    finished_at: datetime | None
    rejected: list[Rejected]


class ModelSpend(BaseModel):
    tier: str
    model: str
    calls: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float


class SpendResponse(BaseModel):
    job_id: str | None
    models: list[ModelSpend]
    calls: int
    cost_usd: float
    all_strong_cost_usd: float = Field(description="the same calls, all sent to the strong model")
    saving_usd: float
    saving_pct: float
    strong_share: float = Field(description="share of the calls made that went to the strong model")


class Health(BaseModel):
    status: Literal["ok"]
    mode: Literal["embedded", "distributed"]


class ErrorResponse(BaseModel):
    detail: str


class ResumeResponse(BaseModel):
    job_id: str
    resumed: bool = Field(description="false when there was nothing to do; `detail` says why")
    status: JobStatus
    detail: str


class TenantCreateBody(BaseModel):
    name: str = Field(min_length=1, max_length=200, description="unique; not starting with 'tn_'")


class TenantResponse(BaseModel):
    id: str
    name: str
    state: Literal["active", "revoked", "no key"] = Field(
        description="'no key': the local tenant, which owns the CLI's jobs")
    created_at: datetime
    key_issued_at: datetime | None
    revoked_at: datetime | None
    jobs: int


class TenantKeyResponse(BaseModel):
    tenant: TenantResponse
    api_key: str = Field(description="shown once: only its SHA-256 is stored")
