"""Calls cut off: items a runner had in flight when it stopped (Ctrl-C, kill -9, a lost machine).

Each goes back to routed, to be called again, and its requests count as unanswered with their cost bound: they
may have reached the provider and be billed although no answer was kept (`routeyard spend` shows them). One
function for the three ways a run stops, so the spend report reads the same whichever it was: Ctrl-C (the
runner puts back its own), resume after a kill (the new runner puts back what the dead one held) and a dead
worker (the reconciler puts back what it held).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

from sqlalchemy.orm import Session

from db import jobs as store
from db import runners
from routeyard.errors import UnknownPrice
from routeyard.pricing import Unbounded, cost_bound, price_for
from routeyard.settings import Price, Settings
from worker.pipeline import job_prices


def put_back_cut_off(session: Session, settings: Settings, job_id: str, holders: Sequence[str] | None,
                     never_sent: Collection[int] = ()) -> int:
    """Put the job's items in flight under `holders` (runner ids; None: every runner, for a process that holds
    the job alone) back to routed, counting their requests as unanswered, except those of `never_sent` (claimed
    items whose call the runner knows it never started: they go back uncounted). Returns how many of those
    counted went back: the calls cut off."""
    held = runners.items_held(session, job_id, holders)
    if not held:
        return 0
    job = store.get_job(session, job_id)
    prices, strong = job_prices(job, settings), job.strong_model
    bounds = {h.id: (0, 0.0) if h.id in never_sent else sent_bound(h, prices, strong, settings) for h in held}
    back = runners.put_back_unanswered(session, job_id, holders, bounds)
    return back - sum(1 for h in held if h.id in never_sent)


def sent_bound(item: runners.HeldItem, prices: dict[str, Price], strong: str, settings: Settings
               ) -> tuple[int, float]:
    """The requests an item in flight may have sent (its shadow's too) and what they may cost at most."""
    models = [m for m in (item.model, strong if item.shadow else None) if m]
    total = 0.0
    for model in models:
        try:
            total += cost_bound(item.body, price_for(model, prices), settings.default_max_tokens)
        except (Unbounded, UnknownPrice):  # billed by duration or pages, or no price: counted, not priced
            pass
    return max(1, len(models)), total
