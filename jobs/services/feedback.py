"""Feedback on stored results, and the preference rows it becomes (the same rows routers train on).

How a judgement becomes a label (1 strong needed, 0.5 tie, 0 weak better):
  prefer strong / tie / weak (both answers were seen)      -> 1 / 0.5 / 0
  rating q in [0, 1] or thumbs (1 up, 0 down) of a WEAK answer -> 1 - q/2: a poor weak answer means the strong
                                                              model was needed; a good one, that it was not
  rating or thumbs of a STRONG answer                       -> stored, not trained on: it says nothing of how
                                                              the weak model would have done
The latest judgement of each kind per item counts.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from sqlalchemy.orm import Session, sessionmaker

from db import catalog
from db import jobs as store
from routers.data import Preference
from routeyard.errors import InvalidInput
from routeyard.states import ItemStatus
from routeyard.text import unstorable

Kind = Literal["prefer", "rating", "thumbs"]
PREFER = {"strong": 1.0, "tie": 0.5, "weak": 0.0}
THUMBS = {"up": 1.0, "down": 0.0}


@dataclass(frozen=True)
class FeedbackIn:
    job_id: str
    custom_id: str
    kind: Kind
    value: float  # prefer: 1/0.5/0; rating: 0..1; thumbs: 1/0


def feedback_value(kind: str, raw: str | float) -> float:
    """A judgement as the user gives it (prefer strong/weak/tie, thumbs up/down, a rating) -> its stored value."""
    if kind == "prefer":
        if raw not in PREFER:
            raise InvalidInput(f"prefer must be strong, weak or tie, got {raw!r}")
        return PREFER[str(raw)]
    if kind == "thumbs":
        if raw not in THUMBS:
            raise InvalidInput(f"thumbs must be up or down, got {raw!r}")
        return THUMBS[str(raw)]
    if kind == "rating":
        try:
            value = float(raw)
        except (TypeError, ValueError):
            raise InvalidInput(f"rating must be a number from 0 to 1, got {raw!r}") from None
        if not 0.0 <= value <= 1.0:  # NaN fails too
            raise InvalidInput(f"rating must be a number from 0 to 1, got {raw!r}")
        return value
    raise InvalidInput(f"field 'kind' must be prefer, rating or thumbs, got {kind!r}")


def record_feedback(sf: sessionmaker[Session], fb: FeedbackIn, tenant_id: str | None = None) -> int:
    if fb.kind not in ("prefer", "rating", "thumbs"):
        raise InvalidInput(f"field 'kind' must be prefer, rating or thumbs, got {fb.kind!r}")
    allowed = {"prefer": (0.0, 0.5, 1.0), "thumbs": (0.0, 1.0)}.get(fb.kind)
    if (allowed and fb.value not in allowed) or not 0.0 <= fb.value <= 1.0:
        raise InvalidInput(f"field 'value' for {fb.kind} must be {allowed or 'between 0 and 1'}, got {fb.value}")
    if why := unstorable(fb.custom_id):  # no item's custom_id holds one, and the query would fail
        raise InvalidInput(f"field 'custom_id': {why}")
    with sf() as session:
        job = store.get_job(session, fb.job_id, tenant_id)
        item = store.item_by_custom_id(session, fb.job_id, fb.custom_id)
        if item is None:
            raise InvalidInput(f"job {fb.job_id} has no item {fb.custom_id!r}")
        if item.status != ItemStatus.SUCCEEDED:
            raise InvalidInput(f"item {fb.custom_id!r} has no answer to judge (it is {item.status})")
        if fb.kind == "prefer" and item.shadow_answer is None:
            raise InvalidInput(f"item {fb.custom_id!r} has one answer ({item.tier}); a preference needs both: submit "
                               "with a shadow share (--shadow) so weak items also get the strong answer, or give a "
                               "rating or thumbs")
        row = catalog.add_feedback(session, item.id, fb.kind, fb.value, job.tenant_id)  # the job's tenant learns
        session.commit()
        return row.id


FEEDBACK_GROUP = "feedback"  # the group of feedback rows: retraining weights them as the user's own traffic


def feedback_preferences(session: Session, since: datetime | None = None, tenant_id: str | None = catalog.ANY_TENANT
                         ) -> list[Preference]:
    """The tenant's feedback as preference rows (ANY_TENANT: everyone's; retraining always names one tenant)."""
    latest: dict[tuple[int, str], tuple[float, str, str | None]] = {}
    for row in catalog.feedback_rows(session, since, tenant_id):
        latest[(row.item_id, row.kind)] = (row.value, row.prompt, row.tier)  # later rows overwrite earlier ones
    out = []
    for (_, kind), (value, prompt, tier) in latest.items():
        if kind == "prefer":
            out.append(Preference(prompt, value, FEEDBACK_GROUP))
        elif tier == "weak":
            out.append(Preference(prompt, 1.0 - value / 2.0, FEEDBACK_GROUP))
    return out
