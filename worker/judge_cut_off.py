"""Judge calls cut off: shadow pairs a runner had in flight when it stopped (a killed `routeyard judge`, a dead
worker). Each pair goes back to be judged again, and the calls it sent count as unanswered with their cost
bound, as item calls do (worker/cut_off.py): the judge may have answered, and billed, them although no verdict
was kept. A new judge run takes back the pairs of holders known dead at once (a killed CLI on this host is
known dead by its pid); the reconciler takes back a dead worker's.
"""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy.orm import Session

from db import jobs as store
from db import judging, runners
from routeyard.errors import UnknownPrice
from routeyard.pricing import Unbounded, cost_bound, price_for
from routeyard.settings import Settings
from worker.judge_prompts import bodies
from worker.pipeline import job_prices


def put_back_judging(session: Session, settings: Settings, job_id: str, holders: Sequence[str]) -> int:
    """Put the job's pairs in flight under `holders` (dead runners) back, counting their calls as unanswered.
    Returns how many went back."""
    held = judging.pairs_held(session, job_id, holders)
    if not held:
        return 0
    prices = job_prices(store.get_job(session, job_id), settings)
    bounds: dict[int, tuple[int, float]] = {}
    for h in held:
        sent = bodies(h.pair, h.mode)
        total = 0.0
        try:
            price = price_for(h.judge_model, prices)
            total = sum(cost_bound(b, price, settings.default_max_tokens) for b in sent)
        except (Unbounded, UnknownPrice):  # counted, not priced
            pass
        bounds[h.pair.item_id] = (len(sent), total)
    return judging.put_back_pairs(session, job_id, holders, bounds)


def take_back_from_dead(session: Session, settings: Settings, job_id: str, me: str) -> int:
    """Before judging a job: the pairs of its holders known dead come back now, instead of after their lease."""
    dead = runners.dead_among(session, judging.judge_holders(session, job_id), settings.dead_after_s, me)
    return put_back_judging(session, settings, job_id, dead) if dead else 0
