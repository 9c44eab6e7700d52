"""The rows every router trains on and is judged on.

A `Preference` says, for one prompt, how the strong model's answer compared with the weak one's:
label 1.0 strong won, 0.0 weak won (or was as good where it counts), 0.5 tie. With ties at 0.5 a
classifier's expected output is 0.5 + 0.5 * (P(strong wins) - P(weak wins)): monotone in the expected
quality gained by calling the strong model, which is what routing ranks by.

An `Outcome` is each model's own quality on one prompt: what PGR is computed from, and the richer row
(a preference follows from it, not the other way round).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

STRONG_WINS, TIE, WEAK_WINS = 1.0, 0.5, 0.0


@dataclass(frozen=True)
class Preference:
    prompt: str
    label: float  # STRONG_WINS, TIE or WEAK_WINS (or a soft value in between)
    group: str = ""  # where it came from (benchmark, subject): for holding out whole groups
    # Each model's own quality, when the row came from per-prompt outcomes: a tie of two right answers and a
    # tie of two wrong ones then stay apart (routers that can use it model each model's quality).
    strong: float | None = None
    weak: float | None = None


@dataclass(frozen=True)
class Outcome:
    """Per-prompt quality of each model (1/0 for correct/incorrect, or a judge's score scaled to [0, 1])."""

    prompt: str
    strong: float
    weak: float
    group: str = ""


def outcome_to_preference(o: Outcome) -> Preference:
    label = STRONG_WINS if o.strong > o.weak else WEAK_WINS if o.strong < o.weak else TIE
    return Preference(o.prompt, label, o.group, o.strong, o.weak)


def data_hash(rows: Sequence[Preference]) -> str:
    """A short hash of the rows a router trained on (recorded with it)."""
    digest = hashlib.sha256()
    for r in rows:
        qualities = "" if r.strong is None else f"\x00{r.strong}\x00{r.weak}"
        digest.update(f"{r.prompt}\x00{r.label}\x00{r.group}{qualities}\x01".encode())
    return digest.hexdigest()[:16]
