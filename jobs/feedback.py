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

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from db import queries
from db.models import Feedback, Item, ItemStatus
from routers.data import Preference

Kind = Literal["prefer", "rating", "thumbs"]
PREFER = {"strong": 1.0, "tie": 0.5, "weak": 0.0}


class FeedbackError(ValueError):
    pass


@dataclass(frozen=True)
class FeedbackIn:
    job_id: str
    custom_id: str
    kind: Kind
    value: float  # prefer: 1/0.5/0; rating: 0..1; thumbs: 1/0


def record_feedback(sf: sessionmaker[Session], fb: FeedbackIn, tenant_id: str | None = None) -> int:
    if fb.kind not in ("prefer", "rating", "thumbs"):
        raise FeedbackError(f"field 'kind' must be prefer, rating or thumbs, got {fb.kind!r}")
    allowed = {"prefer": (0.0, 0.5, 1.0), "thumbs": (0.0, 1.0)}.get(fb.kind)
    if (allowed and fb.value not in allowed) or not 0.0 <= fb.value <= 1.0:
        raise FeedbackError(f"field 'value' for {fb.kind} must be {allowed or 'between 0 and 1'}, got {fb.value}")
    with sf() as session:
        queries.get_job(session, fb.job_id, tenant_id)
        item = session.scalar(select(Item).where(Item.job_id == fb.job_id, Item.custom_id == fb.custom_id))
        if item is None:
            raise FeedbackError(f"job {fb.job_id} has no item {fb.custom_id!r}")
        if item.status != ItemStatus.SUCCEEDED:
            raise FeedbackError(f"item {fb.custom_id!r} has no answer to judge (it is {item.status})")
        row = Feedback(item_id=item.id, kind=fb.kind, value=fb.value)
        session.add(row)
        session.commit()
        return row.id


FEEDBACK_GROUP = "feedback"  # the group of feedback rows: retraining weights them as the user's own traffic


def feedback_preferences(session: Session, since: datetime | None = None) -> list[Preference]:
    query = (select(Feedback.item_id, Feedback.kind, Feedback.value, Item.prompt, Item.tier)
             .join(Item, Item.id == Feedback.item_id).order_by(Feedback.created_at, Feedback.id))
    if since is not None:
        query = query.where(Feedback.created_at >= since)
    latest: dict[tuple[int, str], tuple[float, str, str]] = {}
    for item_id, kind, value, prompt, tier in session.execute(query):
        latest[(item_id, kind)] = (value, prompt, tier)  # later rows overwrite earlier ones
    out = []
    for (_, kind), (value, prompt, tier) in latest.items():
        if kind == "prefer":
            out.append(Preference(prompt, value, FEEDBACK_GROUP))
        elif tier == "weak":
            out.append(Preference(prompt, 1.0 - value / 2.0, FEEDBACK_GROUP))
    return out
