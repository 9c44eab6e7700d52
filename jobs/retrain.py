"""Retraining with a promotion gate, and the router versions that jobs are routed with.

A candidate is trained on the base preference data plus the feedback collected so far, then it and the
router now serving are scored on the same fixed held-out outcomes. The candidate serves only if its APGR beats
the serving router's by `margin`; either way its version row says why. Held-out prompts never train.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy import select, update
from sqlalchemy.orm import Session, sessionmaker

from db.models import RouterVersion, utcnow
from jobs.feedback import feedback_preferences
from jobs.runner import router_runtime
from routers.base import TrainOptions
from routers.calibration import save_quality_curve
from routers.data import Outcome, Preference, data_hash, load_preferences
from routers.evaluate import curve, metrics
from routers.registry import load_router, train_router
from routeyard.settings import Settings

log = logging.getLogger(__name__)
SERVING = "serving"  # the router spec that means "whatever version serves now"


@dataclass(frozen=True)
class RetrainResult:
    version: str
    path: str
    promoted: bool
    candidate_apgr: float
    serving_apgr: float
    decision: str


def serving_version(session: Session) -> RouterVersion | None:
    return session.scalar(select(RouterVersion).where(RouterVersion.serving.is_(True))
                          .order_by(RouterVersion.promoted_at.desc()))


def resolve_router_spec(sf: sessionmaker[Session], spec: str, fallback: str = "mf") -> str:
    """`serving` -> the promoted version's directory (or the shipped `fallback` before any promotion)."""
    if spec != SERVING:
        return spec
    with sf() as session:
        current = serving_version(session)
    return current.path if current else fallback


def retrain(sf: sessionmaker[Session], settings: Settings, router: str, base_data: list[Path],
            heldout: list[Outcome], margin: float = 0.0, seed: int = 0,
            extra: list[Preference] | None = None) -> RetrainResult:
    if not heldout:
        raise ValueError("a held-out set is needed to decide a promotion")
    held = {o.prompt.strip() for o in heldout}
    with sf() as session:
        feedback = feedback_preferences(session)
    rows = [r for r in (load_preferences(base_data) + feedback + (extra or [])) if r.prompt.strip() not in held]
    if not rows:
        raise ValueError("no training rows left once the held-out prompts are set aside")
    runtime = router_runtime(settings)
    candidate = train_router(router, rows, runtime, TrainOptions(seed=seed))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    out = settings.home / "routers" / f"{router}-{stamp}"
    version = candidate.save(out)
    prompts = [o.prompt for o in heldout]
    candidate_scores = candidate.win_rate(prompts)
    candidate_m = metrics(candidate_scores, heldout)
    c = curve(candidate_scores, np.array([o.strong for o in heldout]), np.array([o.weak for o in heldout]))
    save_quality_curve(out, c.fraction, c.pgr, f"{len(heldout)} held-out prompts")
    serving_spec = resolve_router_spec(sf, SERVING, settings.default_router if settings.default_router != SERVING
                                       else "mf")
    serving_m = metrics(load_router(serving_spec, runtime).router.win_rate(prompts), heldout)
    promoted = candidate_m.apgr > serving_m.apgr + margin
    verb = "promoted" if promoted else "kept the serving router"
    decision = (f"{verb}: candidate APGR {candidate_m.apgr:.4f} vs serving ({serving_spec}) {serving_m.apgr:.4f}, "
                f"margin {margin:.4f}, on {len(heldout)} held-out prompts")
    with sf() as session:
        if promoted:
            session.execute(update(RouterVersion).values(serving=False))
        session.add(RouterVersion(
            router=router, version=version, path=str(out), apgr=candidate_m.apgr, baseline_apgr=serving_m.apgr,
            metrics=candidate_m.to_dict(), decision=decision, serving=promoted,
            promoted_at=utcnow() if promoted else None,
            data={"rows": len(rows), "feedback_rows": len(feedback), "data_hash": data_hash(rows),
                  "base": [str(p) for p in base_data]}))
        session.commit()
    log.warning("retrain %s %s: %s", router, version, decision)
    return RetrainResult(version, str(out), promoted, candidate_m.apgr, serving_m.apgr, decision)


def list_versions(session: Session) -> list[RouterVersion]:
    return list(session.scalars(select(RouterVersion).order_by(RouterVersion.created_at.desc())))


def rollback(sf: sessionmaker[Session], version: str) -> RouterVersion:
    """Serve an earlier version again."""
    with sf() as session:
        target = session.scalar(select(RouterVersion).where(RouterVersion.version == version)
                                .order_by(RouterVersion.created_at.desc()))
        if target is None:
            raise ValueError(f"no router version {version!r}; see `routeyard router versions`")
        session.execute(update(RouterVersion).values(serving=False))
        target.serving, target.promoted_at = True, utcnow()
        target.decision += f"; rolled back to at {utcnow().isoformat(timespec='seconds')}"
        session.commit()
        return target
