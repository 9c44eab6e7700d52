"""`routeyard check`: is everything a job needs reachable and configured, before a job is stored?"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.exc import OperationalError

from db.models import LOCAL_TENANT
from db.session import open_database
from jobs.services.versions import SERVING, check_router_spec, resolve_router_spec
from routeyard.errors import RouteyardError
from routeyard.pricing import price_for
from routeyard.redact import redact, safe_url
from routeyard.settings import Endpoint, Settings
from worker.llm_client import probe
from worker.runtime import load_job_router


@dataclass(frozen=True)
class Check:
    name: str
    ok: bool
    detail: str


def run_checks(settings: Settings, router: str | None = SERVING) -> list[Check]:
    """Database, broker (when configured), each tier's endpoint, key, model and price, the judge's too (when
    ROUTEYARD_JUDGE_* is configured), and the router jobs will use (None: skip loading it)."""
    checks: list[Check] = []
    url = settings.resolved_database_url
    try:
        sf = open_database(url)
        checks.append(Check("database", True, f"{safe_url(url)} (migrated)"))
    except OperationalError as exc:
        sf = None
        checks.append(Check("database", False, f"cannot reach {safe_url(url)} (ROUTEYARD_DATABASE_URL): "
                                               f"{str(exc.orig).strip().splitlines()[0]}"))
    if settings.broker_url:
        checks.append(_broker(settings.broker_url))
    else:
        checks.append(Check("broker", True, "none configured: jobs run in this process (embedded)"))
    for tier in ("strong", "weak"):
        problems = [p for p in settings.endpoint_problems() if p.startswith(f"the {tier} ")]
        checks += _endpoint(settings, settings.endpoint(tier), problems)
    if judge_configured(settings):  # a --judge job calls it, and its spend must be priced before it is bought
        checks += _endpoint(settings, settings.judge_endpoint(), settings.judge_problems())
    else:
        checks.append(Check("judge endpoint", True, "not configured (ROUTEYARD_JUDGE_*): needed only for --judge "
                                                    "and `routeyard judge`"))
    if router is not None:
        checks.append(_router(settings, router, sf))
    return checks


def judge_configured(settings: Settings) -> bool:
    """Any of ROUTEYARD_JUDGE_BASE_URL, _API_KEY or _MODEL set away from its default."""
    default_model = Settings.model_fields["judge_model"].default
    return bool(settings.judge_base_url or settings.judge_api_key.get_secret_value()
                or settings.judge_model != default_model)


def _endpoint(settings: Settings, endpoint: Endpoint, problems: list[str]) -> list[Check]:
    """A model endpoint: reachable with its key and serving its model (no completion bought), and priced."""
    tier = endpoint.tier
    if problems:
        checks = [Check(f"{tier} endpoint", False, problems[0])]
    else:
        ok, detail = probe(endpoint, timeout_s=min(settings.request_timeout_s, 15.0))
        checks = [Check(f"{tier} endpoint", ok, redact(detail, settings.secrets()))]
    try:
        price = price_for(endpoint.model, settings.price_table)
        checks.append(Check(f"{tier} price", True, f"${price.input:g} in / ${price.output:g} out per 1M tokens"))
    except RouteyardError as exc:
        checks.append(Check(f"{tier} price", False, str(exc)))
    return checks


def _broker(url: str) -> Check:
    from kombu import Connection  # the broker client: only when a broker is configured

    try:
        with Connection(url, connect_timeout=3) as conn:
            conn.ensure_connection(max_retries=1, timeout=3)
        return Check("broker", True, safe_url(url) or "")
    except Exception as exc:  # kombu raises the transport's own errors
        return Check("broker", False, f"cannot reach {safe_url(url)} (ROUTEYARD_BROKER_URL): {exc}")


def _router(settings: Settings, spec: str, sf: object) -> Check:
    try:
        # `serving` as the CLI's own jobs get it: the local tenant's promoted version first (as submit resolves it)
        resolved = (resolve_router_spec(sf, spec, settings, LOCAL_TENANT)  # type: ignore[arg-type]
                    if sf is not None else spec)
        check_router_spec(resolved)  # as submit checks it: a mistyped path says so, not what loading it raised
        loaded = load_job_router(resolved, settings)
        return Check("router", True, f"{spec} -> {loaded.label}")
    except RouteyardError as exc:
        return Check("router", False, str(exc))
