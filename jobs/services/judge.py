"""`routeyard judge JOB`: judge a job's shadow pairs now, whether or
not it was submitted with `--judge`; pairs already judged are not judged again (`retry_errors` also takes
those whose reply had no verdict)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from db import jobs as store
from db.judging import JudgeErrors, judgment_counts, judgment_errors, pair_count
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def judging_view(session: Session, job_id: str, tenant_id: str | None = None) -> JudgingView:
    job = store.get_job(session, job_id, tenant_id)
    counts = judgment_counts(session, job_id)
    errors = counts.get(JudgmentStatus.ERROR, 0)
    return JudgingView(job_id, job.judge, pair_count(session, job_id), counts.get(JudgmentStatus.JUDGED, 0), errors,
                       judgment_errors(session, job_id) if errors else [])
