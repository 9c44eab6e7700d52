"""Retraining with a promotion gate, and the router versions that jobs are routed with.

A candidate is trained on the base preference data plus the feedback collected so far, then it and the
router now serving are scored on the same fixed held-out outcomes. Held-out prompts never train the
candidate, and the gate judges both routers only on the held-out prompts that neither trained on: a saved
router records the fingerprints of its training prompts (`routers.data.TRAINING_PROMPTS_FILE`), and the
held-out prompts the serving router saw are set aside, since it would be judged on answers it learned. When
fewer than `MIN_GATE_PROMPTS` remain, or the strong and weak models are too close on them for PGR to mean
anything, the retrain is refused before anything trains. A serving router without that record (a checkpoint
saved before it existed, a hub id) has unknown training prompts: the gate says so and compares on the whole
held-out set. Having seen prompts can only flatter the serving router, so a promotion there is still earned,
while a rejection may be unfair to the candidate; it is never the other way round.

The candidate serves only if its APGR beats the serving router's by `margin`; either way its version row
says why. Before any promotion the shipped default router serves; it is listed as a version and can be
rolled back to.

Per tenant: a retrain names one tenant (the CLI's own, `local`, by default). Its candidate trains on the base
data plus that tenant's feedback only, is gated on that tenant's held-out set (the judged shadow pairs whose
prompts fall in its fixed held-out share, `ROUTEYARD_JUDGE_HELDOUT_SHARE`, never trained on; plus any
`--heldout` files), and, promoted, serves that tenant's jobs only. tenant_id None trains the global default
(what serves tenants with no promoted version of their own) on the base data alone: no tenant's feedback.
"""

from __future__ import annotations

import logging
import math
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from db import catalog, retrain_locks
from db.judging import judged_pairs
from db.models import LOCAL_TENANT, RouterVersion
from jobs.services.feedback import FEEDBACK_GROUP, feedback_preferences
from jobs.services.versions import SERVING, resolve_router_spec, router_info, training_prompts_of
from routers.base import TrainOptions
from routers.calibration import save_quality_curve
from routers.data import (
    ROUTELLM_STRONG,
    ROUTELLM_WEAK,
    TRAINING_PROMPTS_FILE,
    Outcome,
    Preference,
    data_hash,
    load_preferences,
    pgr_caveats,
    prompt_fingerprint,
    save_training_prompts,
)
from routers.evaluate import curve, metrics
from routers.registry import load_router, train_router
from routeyard.errors import Conflict, InvalidInput, NotFound
from routeyard.settings import Settings
from worker.heartbeat import beating
from worker.runtime import router_runtime

log = logging.getLogger(__name__)
MIN_GATE_PROMPTS = 100  # held-out prompts neither router trained on, at the least, to decide a promotion
JUDGED_GROUP = "judged"  # held-out outcomes that are a tenant's judged shadow pairs
ALL_TENANTS, GLOBAL = "all", "global"  # `retrain --tenant`: every tenant with feedback; the global default


@dataclass(frozen=True)
class RetrainResult:
    version: str
    path: str
    promoted: bool
    candidate_apgr: float
    serving_apgr: float
    decision: str


def fair_heldout(heldout: list[Outcome], serving_seen: np.ndarray | None, serving: str,
                 min_prompts: int = MIN_GATE_PROMPTS) -> tuple[list[Outcome], str]:
    """The held-out outcomes the serving router never trained on (the candidate never trains on any), and a
    plain note of what was set aside; a ValueError when too few are left, or PGR would mean nothing on them."""
    if serving_seen is None:
        judged = list(heldout)
        note = (f"the serving router {serving} has no record of its training prompts ({TRAINING_PROMPTS_FILE} for "
                "these weights), so the gate cannot tell whether it trained on these held-out prompts: compared on "
                "all of them, which can only favour the serving router (a rejection may be unfair, a promotion is not)")
    else:
        seen = np.isin(_fingerprints_each(heldout), serving_seen)
        judged = [o for o, s in zip(heldout, seen, strict=True) if not s]
        excluded = len(heldout) - len(judged)
        note = (f"{excluded} of {len(heldout)} held-out prompts excluded because the serving router {serving} "
                "trained on them" if excluded else "neither router trained on any held-out prompt")
        if excluded and len(judged) < min_prompts:
            raise InvalidInput(
                f"the serving router {serving} trained on {excluded} of the {len(heldout)} held-out prompts, leaving "
                f"{len(judged)} that neither router saw; a fair promotion needs at least {min_prompts}. Judge "
                "on outcomes it never trained on (e.g. new prompts from your own traffic, with both models' "
                "answers graded)")
    if len(judged) < min_prompts:
        raise InvalidInput(f"{len(judged)} held-out prompts; a fair promotion needs at least {min_prompts} "
                           "(ROUTEYARD_GATE_MIN_PROMPTS)")
    for caveat in pgr_caveats(judged):
        if len(judged) < MIN_GATE_PROMPTS and caveat.startswith("only "):
            continue  # the operator chose a smaller gate (ROUTEYARD_GATE_MIN_PROMPTS): its noise is theirs
        raise InvalidInput(f"cannot decide a promotion on this held-out set: {caveat}")
    return judged, note


def _fingerprints_each(outcomes: list[Outcome]) -> np.ndarray:
    """One fingerprint per outcome, in order (duplicates kept)."""
    return np.array([prompt_fingerprint(o.prompt) for o in outcomes], dtype=np.uint64)


def tenant_heldout(sf: sessionmaker[Session], tenant_id: str | None) -> list[Outcome]:
    """The tenant's held-out judged pairs, as outcomes (each model's quality as the judge saw it)."""
    if tenant_id is None:
        return []
    with sf() as session:
        return [Outcome(p.prompt, p.strong, p.weak, JUDGED_GROUP) for p in judged_pairs(session, tenant_id, True)]


class RetrainRunning(Conflict):
    """A retrain of the same owner is running now: this one did nothing (a schedule's firing is skipped)."""


@contextmanager
def one_retrain_at_a_time(sf: sessionmaker[Session], settings: Settings, tenant_id: str | None) -> Iterator[None]:
    """Hold the owner's retrain claim while the block runs (db/retrain_locks.py); RetrainRunning when another
    live process or thread holds it. Two retrains at once would train twice and store the same version twice."""
    owner = retrain_locks.GLOBAL_OWNER if tenant_id is None else tenant_id
    token = uuid.uuid4().hex
    with beating(sf, settings, "retrain") as heartbeat:  # keeps the claim alive; a dead process's lapses
        for first in (True, False):
            try:
                with sf() as session:
                    holder = retrain_locks.claim(session, owner, token, heartbeat.id, settings.dead_after_s)
                    session.commit()
                break
            except IntegrityError:  # another retrain made the first claim at the same moment: read it
                if not first:
                    raise
        if holder is not None:
            whose = f"tenant {tenant_id}" if tenant_id is not None else "the global default"
            raise RetrainRunning(f"a retrain of {whose} is already running (started {holder.seen:%Y-%m-%d %H:%M:%S} "
                                 f"UTC, pid {holder.pid} on {holder.host}); one runs at a time, so this one did "
                                 "nothing")
        try:
            yield
        finally:
            with sf() as session:
                retrain_locks.release(session, owner, token)
                session.commit()


def check_margin(margin: float) -> None:
    """The APGR a candidate must gain over the serving router: a finite number (NaN would refuse every candidate)."""
    if not math.isfinite(margin):
        raise InvalidInput(f"margin must be a finite number (APGR, e.g. 0.01), got {margin}")


def retrain(sf: sessionmaker[Session], settings: Settings, router: str, base_data: list[Path],
            heldout: list[Outcome], margin: float = 0.0, seed: int = 0,
            extra: list[Preference] | None = None, strong_column: str = ROUTELLM_STRONG,
            weak_column: str = ROUTELLM_WEAK, tenant_id: str | None = LOCAL_TENANT) -> RetrainResult:
    """Train a candidate for the tenant and gate it against the version serving it; one at a time per tenant
    (RetrainRunning while another runs)."""
    check_margin(margin)
    with one_retrain_at_a_time(sf, settings, tenant_id):
        return _retrain(sf, settings, router, base_data, heldout, margin, seed, extra, strong_column, weak_column,
                        tenant_id)


def _retrain(sf: sessionmaker[Session], settings: Settings, router: str, base_data: list[Path],
             heldout: list[Outcome], margin: float, seed: int, extra: list[Preference] | None, strong_column: str,
             weak_column: str, tenant_id: str | None) -> RetrainResult:
    judged_heldout = tenant_heldout(sf, tenant_id)
    heldout = list(heldout) + judged_heldout
    whose = f"tenant {tenant_id}" if tenant_id is not None else "the global default"
    if not heldout:
        raise InvalidInput(f"no held-out set for {whose}: give held-out outcomes (--heldout), or judge more shadow "
                           f"pairs (--shadow with --judge): {settings.judge_heldout_share:.0%} of a tenant's judged "
                           "prompts are its held-out set")
    serving_spec = resolve_router_spec(sf, SERVING, settings, tenant_id)
    judged, note = fair_heldout(heldout, training_prompts_of(serving_spec), router_info(serving_spec).label,
                                settings.gate_min_prompts)
    runtime = router_runtime(settings)
    serving_router = load_router(serving_spec, runtime)

    held = {o.prompt.strip() for o in heldout}
    with sf() as session:  # only this tenant's feedback: no tenant's labels reach another's router
        feedback = feedback_preferences(session, tenant_id=tenant_id) if tenant_id is not None else []
    base = load_preferences(base_data, strong_column, weak_column) if base_data else []
    rows = [r for r in (base + feedback + (extra or [])) if r.prompt.strip() not in held]
    used_feedback = sum(1 for r in feedback if r.prompt.strip() not in held)
    if not rows:
        raise InvalidInput("no training rows left once the held-out prompts are set aside")
    # Feedback is the users' own traffic: routers that can weight it up (by validation on it) do.
    candidate = train_router(router, rows, runtime, TrainOptions(seed=seed, focus_groups=frozenset({FEEDBACK_GROUP})))
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S%f")
    out = settings.home / "routers" / (f"{router}-{stamp}" if tenant_id is None else f"{tenant_id}-{router}-{stamp}")
    version = candidate.save(out)
    save_training_prompts(out, [r.prompt for r in rows], version)

    candidate_scores = candidate.win_rate([o.prompt for o in heldout])  # it saw none: its curve uses them all
    c = curve(candidate_scores, np.array([o.strong for o in heldout]), np.array([o.weak for o in heldout]))
    save_quality_curve(out, c.fraction, c.pgr, f"{len(heldout)} held-out prompts")
    keep = np.isin(_fingerprints_each(heldout), _fingerprints_each(judged))
    candidate_m = metrics(candidate_scores[keep], judged)
    serving_m = metrics(serving_router.router.win_rate([o.prompt for o in judged]), judged)
    promoted = candidate_m.apgr > serving_m.apgr + margin
    verb = f"promoted for {whose}" if promoted else f"kept the serving router of {whose}"
    n_judged = sum(1 for o in judged if o.group == JUDGED_GROUP)
    decision = (f"{verb}: candidate APGR {candidate_m.apgr:.4f} vs serving {serving_router.label} "
                f"{serving_m.apgr:.4f} on {len(judged)} held-out prompts, the same for both ({n_judged} judged shadow "
                f"pairs, {len(judged) - n_judged} from files), margin {margin:.4f} "
                f"({'met' if promoted else 'not met'}: {candidate_m.apgr - serving_m.apgr:+.4f}); trained on "
                f"{len(rows)} rows ({len(base)} base, {used_feedback} feedback of {whose}); {note}")
    if base and used_feedback and getattr(candidate.config, "focus_c", "") is None:  # `linear`'s validation said no
        decision += ("; the feedback left the base heads as they were (too few rows, or nothing a correction "
                     "could learn from them yet)")
    with sf() as session:
        stored = catalog.add_version(session, RouterVersion(
            tenant_id=tenant_id, router=router, version=version, path=str(out), apgr=candidate_m.apgr,
            baseline_apgr=serving_m.apgr, metrics=candidate_m.to_dict(), decision=decision, serving=False,
            data={"rows": len(rows), "base_rows": len(base), "feedback_rows": used_feedback,
                  "data_hash": data_hash(rows), "base": [str(p) for p in base_data], "heldout": len(heldout),
                  "heldout_judged": len(judged_heldout), "judged_on": len(judged),
                  "heldout_excluded": len(heldout) - len(judged), "serving": serving_router.label,
                  "margin": margin, "tenant": tenant_id}), serve=promoted)
        if not Path(stored.path).is_dir():  # a version stored before whose directory is gone: this copy serves it
            stored.path = str(out)
        session.commit()
    if stored.path != str(out):  # the same weights, already saved where the stored row points
        shutil.rmtree(out, ignore_errors=True)
    # INFO: a worker's log (beat's scheduled retrains) keeps it; the CLI prints the decision itself, and a
    # promotion is no warning
    log.info("retrain %s %s for %s: %s", router, version, whose, decision)
    return RetrainResult(version, stored.path, promoted, candidate_m.apgr, serving_m.apgr, decision)


def tenants_to_retrain(sf: sessionmaker[Session], spec: str | None) -> list[str | None]:
    """`all`: every tenant with feedback (user or judge) or judged pairs, oldest first; `global`: the global
    default; else one tenant, by name or id."""
    with sf() as session:
        if spec == ALL_TENANTS:
            return list(catalog.tenants_with_feedback(session))
        if spec in (None, GLOBAL):
            return [None]
        tenant = catalog.find_tenant(session, spec)
        if tenant is None:
            raise NotFound(f"no tenant {spec!r}; see `routeyard tenant list`")
        return [tenant.id]
