"""`routeyard judge JOB`: judge a job's shadow pairs now, whether or
not it was submitted with `--judge`; pairs already judged are not judged again (`retry_errors` also takes
those whose reply had no verdict)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import jobs as store
from db import runners
from db.judging import JudgeErrors, judgment_counts, judgment_errors, pair_count, pairs_in_flight
from db.models import aware, utcnow
from routeyard.errors import InvalidInput
from routeyard.pricing import price_for
from routeyard.settings import Settings
from routeyard.states import JOB_ACTIVE, JudgmentStatus
from worker.judge import MODES, JudgeSummary, run_judge


def judge_job_pairs(sf: sessionmaker[Session], settings: Settings, job_id: str, *, tenant_id: str | None = None,
                    mode: str | None = None, retry_errors: bool = False) -> JudgeSummary:
    if mode is not None and mode not in MODES:
        raise InvalidInput(f"--mode must be one of {', '.join(MODES)}, got {mode!r}")
    with sf() as session:
        job = store.get_job(session, job_id, tenant_id)
        if job.status in JOB_ACTIVE:
            raise InvalidInput(f"job {job_id} is {job.status}: its pairs are judged once it has completed")
        if not pair_count(session, job_id):
            raise InvalidInput(f"job {job_id} has no shadow pairs to judge (submit with --shadow, e.g. --shadow 0.05, "
                               "so some weak items also get the strong answer)")
    problems = settings.judge_problems()
    if problems:
        raise InvalidInput("; ".join(problems))
    price_for(settings.judge_model, settings.price_table)  # spend must be countable before anything is bought
    return run_judge(sf, settings, job_id, mode=mode, retry_errors=retry_errors)


@dataclass(frozen=True)
class JudgingView:
    """Where a job's judging stands: its shadow pairs, how many were judged, and why the others got no verdict."""

    job_id: str
    mode: str | None  # the judge mode the job asked for (None: submitted without --judge)
    pairs: int
    judged: int
    errors: int
    error_reasons: list[JudgeErrors]
    in_flight: int = 0  # pairs another process holds (or held): no verdict yet, not judged by this run
    in_flight_notes: list[str] = field(default_factory=list)  # who holds them, and when they can be taken back

    @property
    def unjudged(self) -> int:
        """Pairs without a verdict, whatever the reason: errors, in flight, cut off, never claimed."""
        return self.pairs - self.judged

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "unjudged": self.unjudged}


def judging_view(session: Session, job_id: str, tenant_id: str | None = None,
                 settings: Settings | None = None) -> JudgingView:
    job = store.get_job(session, job_id, tenant_id)
    counts = judgment_counts(session, job_id)
    errors = counts.get(JudgmentStatus.ERROR, 0)
    held = pairs_in_flight(session, job_id)
    return JudgingView(job_id, job.judge, pair_count(session, job_id), counts.get(JudgmentStatus.JUDGED, 0), errors,
                       judgment_errors(session, job_id) if errors else [], len(held),
                       _held_notes(session, job_id, held, settings or Settings()))


def _held_notes(session: Session, job_id: str, held: list[tuple[str | None, Any]], settings: Settings) -> list[str]:
    """Per holder of pairs in flight: who, and when `routeyard judge` can take its pairs (a live holder's only
    once it is found dead; an unknown holder's when their lease runs out)."""
    notes = []
    by_holder: dict[str | None, list[Any]] = {}
    for holder, started in held:
        by_holder.setdefault(holder, []).append(started)
    for holder_id, started in sorted(by_holder.items(), key=lambda kv: kv[0] or ""):
        n = f"{len(started)} pair{'s' if len(started) != 1 else ''} in flight"
        found = runners.holder(session, holder_id) if holder_id else None
        if found is not None and not runners.dead_among(session, [found.runner_id], settings.dead_after_s, ""):
            ago = max(0.0, (utcnow() - aware(found.seen)).total_seconds())
            notes.append(f"{n}, held by a live {found.kind} runner (pid {found.pid} on {found.host}, last heartbeat "
                         f"{ago:.0f} s ago): it is judging them; should it stop, `routeyard judge {job_id}` takes "
                         f"them back once it is found dead ({settings.dead_after_s:.0f} s without a heartbeat)")
        elif holder_id:
            notes.append(f"{n}, held by a process that stopped: `routeyard judge {job_id}` takes them back now")
        else:
            free = max(aware(s) for s in started) + timedelta(seconds=settings.effective_lease_s)
            wait = max(0.0, (free - utcnow()).total_seconds())
            notes.append(f"{n} with no runner known: claimable again at {free:%H:%M:%S} UTC (in {wait:.0f} s), "
                         f"when `routeyard judge {job_id}` judges them")
    return notes
