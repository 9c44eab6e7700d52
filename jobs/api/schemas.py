"""What the HTTP API accepts and returns, as pydantic models, so OpenAPI documents every response."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from routeyard.states import ItemStatus, JobStatus


class Rejected(BaseModel):
    """An input line that was not taken: the error file has it too."""

    line: int
    reason: str
    code: str | None = Field(default=None, description="the error code, as the error file gives it "
                                                       "(invalid_json_line, invalid_url, duplicate_custom_id, ...)")
    custom_id: str | None = Field(default=None, description="the line's custom_id (a plain line's id), if it had one")


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
    value: float = Field(ge=0.0, le=1.0, allow_inf_nan=False,
                         description="prefer: 1 strong, 0.5 tie, 0 weak; rating 0..1; thumbs 1/0")


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


class JudgingCounts(BaseModel):
    pairs: int = Field(description="shadow pairs: weak items also answered by the strong model")
    judged: int
    errors: int = Field(description="pairs whose judge replies had no verdict (or whose judge calls failed)")
    in_flight: int
    unjudged: int = Field(description="pairs without a verdict, whatever the reason")


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
    shadow_fraction: float | None = None
    judge: str | None = Field(None, description="the judge mode the job asked for: pair or grade")
    judging: JudgingCounts | None = Field(None, description="its shadow pairs and their verdicts, if it has any")


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
    calls: int = Field(description="the routed calls (strong and weak); all_calls adds the shadow and judge calls")
    cost_usd: float = Field(description="every call's: the routed ones, and the shadow and judge calls on top")
    all_calls: int = Field(0, description="every call: routed, shadow and judge (the calls that cost_usd pays for)")
    all_strong_cost_usd: float = Field(description="the same calls, all sent to the strong model")
    saving_usd: float
    saving_pct: float
    strong_share: float = Field(description="share of the calls made that went to the strong model")
    unanswered_requests: int = Field(0, description="requests sent that got no answer (timed out): in no item's "
                                     "cost, but a provider may have billed them")
    unanswered_cost_bound_usd: float = Field(0.0, description="at most what those may have cost (each priced as "
                                             "if answered in full)")
    all_strong_batch_cost_usd: float | None = Field(None, description="the same calls all sent to the strong model "
                                                    "through its provider's Batch API (null: it has no batch price)")
    saving_vs_batch_pct: float | None = Field(None, description="the saving against that")


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


# --- the OpenAI-compatible Files and Batches API: the objects OpenAI's SDK parses (openai.types) ----------


class OpenAIErrorBody(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class OpenAIError(BaseModel):
    error: OpenAIErrorBody


class FileObject(BaseModel):
    id: str
    object: Literal["file"] = "file"
    bytes: int
    created_at: int
    filename: str
    purpose: Literal["batch", "batch_output"]
    status: Literal["uploaded", "processed", "error"] = "processed"
    expires_at: int | None = None
    status_details: str | None = None


class FileList(BaseModel):
    object: Literal["list"] = "list"
    data: list[FileObject]
    first_id: str | None
    last_id: str | None
    has_more: bool


class FileDeleted(BaseModel):
    id: str
    object: Literal["file"] = "file"
    deleted: bool


class ExpiresAfter(BaseModel):
    anchor: Literal["created_at"]
    seconds: int = Field(ge=3600, le=2_592_000)


class BatchCreateBody(BaseModel):
    input_file_id: str = Field(max_length=40)
    endpoint: str = Field(description="/v1/chat/completions (the one endpoint Routeyard routes)")
    completion_window: str = Field(description="24h")
    metadata: dict[str, str] | None = Field(
        default=None, description="up to 16 keys; strong_fraction, budget_usd, target_pgr, shadow, judge, router and "
                                  "tag are the job's routing options, other keys are kept as they are")
    output_expires_after: ExpiresAfter | None = None


class BatchError(BaseModel):
    code: str | None = None
    line: int | None = None
    message: str | None = None
    param: str | None = None


class BatchErrors(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchError]


class BatchRequestCounts(BaseModel):
    total: int = Field(description="input lines: requests and rejected lines")
    completed: int = Field(description="requests answered successfully (in the output file)")
    failed: int = Field(description="requests that failed and rejected input lines (in the error file)")


class InputTokensDetails(BaseModel):
    cached_tokens: int


class OutputTokensDetails(BaseModel):
    reasoning_tokens: int


class BatchUsage(BaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class BatchObject(BaseModel):
    id: str = Field(description="the job's id: status, results, spend and feedback take it")
    object: Literal["batch"] = "batch"
    endpoint: str
    errors: BatchErrors | None
    input_file_id: str
    completion_window: str
    status: Literal["validating", "failed", "in_progress", "finalizing", "completed", "expired", "cancelling",
                    "cancelled"]
    output_file_id: str | None
    error_file_id: str | None
    created_at: int
    in_progress_at: int | None
    expires_at: int | None
    finalizing_at: int | None
    completed_at: int | None
    failed_at: int | None
    expired_at: int | None
    cancelling_at: int | None
    cancelled_at: int | None
    request_counts: BatchRequestCounts
    metadata: dict[str, str] | None
    model: str | None
    usage: BatchUsage | None


class BatchList(BaseModel):
    object: Literal["list"] = "list"
    data: list[BatchObject]
    first_id: str | None
    last_id: str | None
    has_more: bool
