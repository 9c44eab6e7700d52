"""The states of a job and of its items, named once. Stored as their string values."""

from __future__ import annotations

from enum import StrEnum


class JobStatus(StrEnum):
    QUEUED = "queued"  # stored, nothing run yet
    SCORING = "scoring"  # the router is scoring its items
    RUNNING = "running"  # routed; model calls under way
    COMPLETED = "completed"  # every item finished; some may have failed
    CANCELLED = "cancelled"
    FAILED = "failed"  # could not run (its router did not load, or its background run kept failing): items failed
    # with the reason, never re-run

    @property
    def ended(self) -> bool:
        return self in JOB_ENDED


class ItemStatus(StrEnum):
    PENDING = "pending"  # stored, not scored yet
    ROUTED = "routed"  # scored and assigned a model
    IN_FLIGHT = "in_flight"  # a call is being made
    BATCHED = "batched"  # in a provider batch (its tier runs in batch mode), waiting for the provider's answer
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"  # the job was cancelled before this item was called

    @property
    def finished(self) -> bool:
        return self in ITEM_FINISHED


# A job in one of these never moves again (a later run or a late worker must not undo a cancel).
JOB_ENDED: frozenset[JobStatus] = frozenset({JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.FAILED})
# Ended for good: `run`/`resume` refuse these (a completed job may run again for its failed items).
JOB_FINAL: frozenset[JobStatus] = frozenset({JobStatus.CANCELLED, JobStatus.FAILED})
JOB_ACTIVE: frozenset[JobStatus] = frozenset(JobStatus) - JOB_ENDED
# An item in one of these is never called again.
ITEM_FINISHED: frozenset[ItemStatus] = frozenset({ItemStatus.SUCCEEDED, ItemStatus.FAILED, ItemStatus.CANCELLED})
ITEM_UNFINISHED: frozenset[ItemStatus] = frozenset(ItemStatus) - ITEM_FINISHED



class JudgmentStatus(StrEnum):
    """A shadow pair's judging. A pair that is judged (or whose reply could not be read) is never judged again
    unless asked (`routeyard judge JOB --retry-errors`); one in flight past its lease died with its process."""

    IN_FLIGHT = "in_flight"
    JUDGED = "judged"  # a verdict, stored as a feedback row
    ERROR = "error"  # a call failed or the reply had no verdict: stored, never a label
    CUT_OFF = "cut_off"  # its runner died with the calls in flight (counted as unanswered): judged again next run


class ProviderBatchStatus(StrEnum):
    """A share of a job sent through a provider's Batch API (a tier in batch mode)."""

    PREPARING = "preparing"  # its items are chosen and stored; the input file or the batch may not exist yet
    SUBMITTED = "submitted"  # the provider's batch id is stored: from now on it is polled, never created again
    MERGED = "merged"  # the provider's batch ended and its output and error files are merged into the items
