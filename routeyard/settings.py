"""The one settings object. Every knob is a `ROUTEYARD_*` environment variable (or a `.env` line)."""

from __future__ import annotations

import os
from functools import cached_property
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

Tier = Literal["strong", "weak"]
CallMode = Literal["direct", "batch"]
HttpBackend = Literal["aiohttp", "httpx"]
Role = Literal["strong", "weak", "judge"]  # an endpoint: the two tiers a job routes between, and the judge


class Price(BaseModel):
    """Dollars per one million tokens, and the share a provider's batch API takes off (None: no batch price)."""

    input: float = Field(ge=0)
    output: float = Field(ge=0)
    batch_discount: float | None = Field(default=None, ge=0, le=1)


class Endpoint(BaseModel):
    """Where one tier's model (or the judge) is served. The key is a SecretStr so it never prints."""

    tier: Role
    base_url: str | None
    model: str
    api_key: SecretStr


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="ROUTEYARD_", env_file=".env", extra="ignore")

    home: Path = Field(default_factory=lambda: Path.home() / ".routeyard")
    database_url: str | None = None  # default: sqlite file under `home`
    broker_url: str | None = None  # set (redis://...) to run jobs on Celery workers

    strong_base_url: str | None = None
    strong_model: str = "gpt-4-1106-preview"
    strong_api_key: SecretStr = SecretStr("")
    weak_base_url: str | None = None
    weak_model: str = "mixtral-8x7b-instruct"
    weak_api_key: SecretStr = SecretStr("")

    # The judge (`--judge`): labels shadow pairs; priced from the same table as the two tiers.
    judge_base_url: str | None = None
    judge_model: str = "gpt-4o"
    judge_api_key: SecretStr = SecretStr("")
    # of a tenant's judged prompts, the share set aside (by prompt) as its gate: never trained on
    judge_heldout_share: float = Field(default=0.2, ge=0.0, lt=1.0)
    gate_min_prompts: int = Field(default=100, ge=1)  # held-out prompts a promotion needs at the least

    pricing: dict[str, Price] = Field(default_factory=dict)

    default_router: str = "serving"  # the promoted router version; the shipped default router until one is promoted
    concurrency: int = Field(default=16, ge=1, le=1024)
    max_retries: int = Field(default=5, ge=0)
    request_timeout_s: float = Field(default=120.0, gt=0)
    # The HTTP stack under the `openai` client: "aiohttp" (the SDK's own DefaultAioHttpClient transport) spends
    # about 40% less CPU a call than httpx's connection pool, which scans every pooled connection on each request
    # (benchmarks/throughput.py); "httpx" is the SDK's default, for a gateway or proxy setup aiohttp mishandles.
    http_backend: HttpBackend = "aiohttp"
    default_max_tokens: int = Field(default=1024, ge=1)  # set on budgeted requests that give none: it bounds cost
    # A completion keeps retrying a claim or a result write this long while the database cannot be reached.
    db_retry_s: float = Field(default=300.0, gt=0)
    score_batch_size: int = Field(default=256, ge=1)
    embedding_batch_size: int = Field(default=64, ge=1)
    device: str = "auto"  # torch device for routers: auto, cpu, cuda, cuda:1, mps
    # How the default encoder (MiniLM) runs: ONNX Runtime with int8 weights, 2.4x (idle) to 2.8x (loaded) PyTorch's
    # speed on a 2-core CPU, same decisions (benchmarks/encoder_speed.py); "auto": that on a CPU, PyTorch on a GPU.
    encoder_backend: Literal["auto", "torch", "onnx"] = "auto"
    admin_key: SecretStr = SecretStr("")  # the API's /v1/admin paths (tenants); empty: those paths are off
    # Input limits: an upload (POST /v1/jobs, /v1/files: 413 above it, refused before it is read whole) and one
    # line of a batch file (a per-line error above it, in every input form).
    max_upload_bytes: int = Field(default=200 * 1024 * 1024, ge=1)
    max_line_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)

    # How each tier's routed share is called: "direct" (a call per item, now) or "batch" (the provider's Batch
    # API: half the list price at OpenAI, Anthropic, Google and others, answered within its completion window).
    strong_mode: CallMode = "direct"
    weak_mode: CallMode = "direct"
    batch_poll_s: float = Field(default=30.0, gt=0)  # first wait between polls of a provider batch; it doubles
    batch_poll_max_s: float = Field(default=600.0, gt=0)  # ... up to this
    batch_max_requests: int = Field(default=50_000, ge=1)  # per input file: OpenAI's limit
    batch_max_bytes: int = Field(default=200 * 2**20, ge=1024)  # per input file: OpenAI's limit (200 MB)
    batch_completion_window: str = "24h"  # the only window OpenAI offers
    # What happens to items an expired or partly failed provider batch left unanswered: a new provider batch
    # ("resubmit", at batch prices; up to max_retries rounds) or direct calls ("direct", at once, list price).
    batch_fallback: Literal["resubmit", "direct"] = "resubmit"

    # Distributed mode (a broker is configured).
    # Items per completion task; a job of more than 2,000 such tasks gets larger ones (worker/tasks.py).
    complete_batch_size: int = Field(default=50, ge=1)
    lease_s: float | None = Field(default=None, gt=0)  # an item in flight this long is re-claimable
    stall_s: float = Field(default=120.0, gt=0)  # a job with no progress this long is re-enqueued
    reconcile_every_s: float = Field(default=10.0, gt=0)  # how often beat looks for stalled jobs and dead runners
    # Every process that runs jobs (worker, embedded runner) beats this often; one silent for dead_after_s is dead:
    # its items in flight are released at once, and an embedded job it held may be taken up by another process.
    heartbeat_s: float = Field(default=5.0, gt=0)
    dead_after_s: float = Field(default=20.0, gt=0)
    visibility_timeout_s: float = Field(default=3600.0, gt=0)  # Redis: unacked tasks come back after this
    schedule_poll_s: float = Field(default=30.0, gt=0)  # how often beat looks for due schedules

    @field_validator("database_url")
    @classmethod
    def _a_database_we_run_on(cls, url: str | None) -> str | None:
        """Refused here, named, rather than failing deep inside the first connection (the message never repeats
        the URL: it may hold a password)."""
        if not url:
            return url
        from sqlalchemy.engine import make_url  # here: settings load in processes that never open a database
        from sqlalchemy.exc import ArgumentError

        example = "e.g. postgresql+psycopg://user@host:5432/db or sqlite:////path/routeyard.db"
        try:
            parsed = make_url(url)
            backend = parsed.get_backend_name()
        except (ArgumentError, ValueError):
            raise ValueError(f"not a database URL (or its port is not a number); {example}") from None
        if backend not in ("postgresql", "sqlite"):
            raise ValueError(f"Routeyard runs on PostgreSQL or SQLite, not {backend}; {example}")
        try:
            parsed.get_dialect().import_dbapi()
        except ImportError:
            raise ValueError(f"no driver {parsed.drivername!r} is installed; {example}") from None
        folder = Path(parsed.database).expanduser().parent if backend == "sqlite" and parsed.database not in (
            None, "", ":memory:") else None
        if folder is not None and not folder.is_dir():  # SQLite would make a new, empty database: a typo shows no jobs
            raise ValueError(f"the SQLite file's directory {folder} does not exist; create it, or correct the path")
        return url

    @field_validator("strong_base_url", "weak_base_url", "judge_base_url")
    @classmethod
    def _no_password_in_url(cls, url: str | None) -> str | None:
        """user:password@ in a model's base URL: the client sends the API key as its Authorization header, and
        the aiohttp transport refuses both at once, so every call would fail; and the URL is printed (`check`)."""
        if url and "@" in (urlsplit(url).netloc or ""):
            raise ValueError("credentials in the URL (user:password@) are not supported: give the key as that "
                             "endpoint's ROUTEYARD_*_API_KEY, and the URL without them")
        return url

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{self.home / 'routeyard.db'}"

    @property
    def effective_lease_s(self) -> float:
        """Long enough for a call with all its retries: a live call is never taken over."""
        if self.lease_s is not None:
            return self.lease_s
        return self.request_timeout_s * (self.max_retries + 1) + 60.0

    def mode(self, tier: str) -> CallMode:
        return self.strong_mode if tier == "strong" else self.weak_mode

    @property
    def batch_tiers(self) -> tuple[str, ...]:
        """The tiers whose routed share goes through the provider's Batch API."""
        return tuple(t for t in ("strong", "weak") if self.mode(t) == "batch")

    @property
    def cache_dir(self) -> Path:
        return self.home / "cache"

    @property
    def embedded(self) -> bool:
        """No broker configured: run every step in this process."""
        return not self.broker_url

    @cached_property
    def price_table(self) -> dict[str, Price]:
        """The operator's prices (ROUTEYARD_PRICING); routeyard.pricing.price_for falls back to the maintained
        list for any model not named here."""
        return dict(self.pricing)

    def endpoint(self, tier: Tier) -> Endpoint:
        if tier == "strong":
            return Endpoint(tier=tier, base_url=self.strong_base_url, model=self.strong_model,
                            api_key=self.strong_api_key)
        return Endpoint(tier=tier, base_url=self.weak_base_url, model=self.weak_model,
                        api_key=self.weak_api_key)

    def judge_endpoint(self) -> Endpoint:
        return Endpoint(tier="judge", base_url=self.judge_base_url, model=self.judge_model,
                        api_key=self.judge_api_key)

    def judge_problems(self) -> list[str]:
        """What stops the judge from being called at all (as endpoint_problems does for the tiers)."""
        end = self.judge_endpoint()
        if end.base_url is None and not end.api_key.get_secret_value() and not os.environ.get("OPENAI_API_KEY"):
            return [f"the judge model {end.model!r} would be called on OpenAI, but no API key is set: set "
                    "ROUTEYARD_JUDGE_API_KEY, or ROUTEYARD_JUDGE_BASE_URL to your own server"]
        return []

    def endpoint_problems(self) -> list[str]:
        """What stops a tier's model from being called at all, found without a network call: OpenAI itself
        (no base URL) needs a key, from ROUTEYARD_<TIER>_API_KEY or the environment's OPENAI_API_KEY."""
        problems = []
        for tier in ("strong", "weak"):
            end = self.endpoint(tier)
            if end.base_url is None and not end.api_key.get_secret_value() and not os.environ.get("OPENAI_API_KEY"):
                problems.append(f"the {tier} model {end.model!r} would be called on OpenAI, but no API key is set: "
                                f"set ROUTEYARD_{tier.upper()}_API_KEY, or ROUTEYARD_{tier.upper()}_BASE_URL to "
                                "your own server (vLLM, Ollama, a gateway)")
        return problems

    def secrets(self) -> list[str]:
        """Every secret value, for scrubbing from anything that gets stored or logged."""
        keys = [self.strong_api_key.get_secret_value(), self.weak_api_key.get_secret_value(),
                self.judge_api_key.get_secret_value(), self.admin_key.get_secret_value()]
        return [k for k in keys if len(k) >= 4]
