"""Call slots shared by every completion a process runs at once (issue 14.4, 17.2).

A completion task holds its items until its slowest call ends. Given slots of its own, a task's tail leaves
most of them idle (one worker measured a median of 17 of 32 busy). Here a process has one pool of
`concurrency` call slots. Each completion (a Celery task, an embedded run) hands its items to the pool as a
`Feed`, and one feeder claims them chunk by chunk, oldest feed first. While one task drains its last calls,
the next task's items take the slots it frees.

The lease stays honest because claims are taken only shortly before a slot frees. Claimed items that have
not finished are capped at `concurrency + ahead`, so at most `ahead` (two claim chunks) wait for a slot. A
claim is taken once a chunk's worth of that room is free, and takes all the room there is then (up to
CLAIM_CHUNK), so a slow claim does not leave slots idle. A claimed item therefore starts within about one
call's time. That is far inside its lease while calls are quick, but not when every call in flight runs to its
timeout (a provider outage): so an item that waited longer than its lease can spare (`renew_after_s`: the
lease less the longest call) has its lease renewed before its call, and is not called if it is no longer
this runner's (its lease ran out and another worker took it over) or its job has ended.

A cancel leaves calls in flight to finish, but an item still waiting for its slot has sent nothing: it must
not be called once its job has ended. An item that waited more than a second reads its job's status first
(one read a second per feed however many items wait: `Feed.job_ended`) and, if the job has ended, goes through
the renewal, which cancels it. Quick calls never pay for the read: their items wait less than a second.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from db.jobs import Claim

log = logging.getLogger(__name__)
# Items claimed per UPDATE at most; half the concurrency below that. A claim's statement costs about the same
# for 8 items as for 32 (SQLite: 0.21 against 0.06 ms of CPU an item), and that CPU is taken from the calls.
CLAIM_CHUNK = 64

ClaimFn = Callable[[list[int]], Awaitable[dict[int, Claim]]]
CallFn = Callable[[int, Claim], Awaitable[None]]
RenewFn = Callable[[int, Claim], Awaitable[bool]]
EndedFn = Callable[[], Awaitable[bool]]
# An item that waited this long for its slot checks that its job still runs (a cancel may have come meanwhile);
# the answer is shared by the feed's items for as long again. Calls quicker than this never pay for the read.
CHECK_ENDED_AFTER_S = 1.0


@dataclass(eq=False)
class Feed:
    """One completion's items: `claim` takes a chunk of them (the ones still claimable), `call` runs one."""

    todo: deque[int]
    claim: ClaimFn
    call: CallFn
    renew: RenewFn | None = None  # None: claims outlast any wait and no cancel is looked for
    renew_after_s: float = math.inf  # a claimed item that waited longer for its slot is renewed first
    ended: EndedFn | None = None  # whether the job has ended (a cancel): items that waited are renewed if so
    claiming: bool = False  # a chunk is being claimed: its items are neither in todo nor running yet
    running: int = 0
    error: BaseException | None = None
    done: asyncio.Event = field(default_factory=asyncio.Event)
    _ended: bool = False
    _ended_read_at: float = -math.inf
    _ended_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def drained(self) -> bool:
        return not self.todo and not self.claiming and self.running == 0

    async def job_ended(self) -> bool:
        """`ended()`, read at most once every CHECK_ENDED_AFTER_S by all the items that ask meanwhile."""
        if self.ended is None:
            return False
        async with self._ended_lock:
            if not self._ended and time.monotonic() - self._ended_read_at >= CHECK_ENDED_AFTER_S:
                self._ended = await self.ended()
                self._ended_read_at = time.monotonic()
        return self._ended


@dataclass
class SlotStats:
    """What the pool did: the most calls in flight at once, the most claimed items that waited for a slot
    (never above `ahead`), and, while it held work, slot-seconds busy against seconds held (their ratio is the
    mean number of busy slots: issue 14.4 measured 17 of 32)."""

    peak_busy: int = 0
    peak_waiting: int = 0
    claims: int = 0
    renewed: int = 0  # claimed items that waited past renew_after_s, renewed, then called
    lost: int = 0  # ... and not renewed (no longer this runner's, or the job ended): not called
    busy_slot_s: float = 0.0
    held_s: float = 0.0

    @property
    def mean_busy(self) -> float:
        return self.busy_slot_s / self.held_s if self.held_s else 0.0


class Slots:
    """`concurrency` call slots for every feed run on this event loop."""

    def __init__(self, concurrency: int) -> None:
        self.concurrency = concurrency
        self.chunk = max(1, min(CLAIM_CHUNK, concurrency // 2))
        self.ahead = 2 * self.chunk  # claimed items that may wait for a slot: two chunks start within a call's time
        self.busy = 0
        self.stats = SlotStats()
        self._room = concurrency + self.ahead  # claims not yet finished may not exceed concurrency + ahead
        self._room_freed = asyncio.Event()
        self._calls = asyncio.Semaphore(concurrency)
        self._feeds: list[Feed] = []
        self._fed = asyncio.Event()
        self._feeder: asyncio.Task[None] | None = None
        self._running: set[asyncio.Task[None]] = set()
        self._ticked = time.monotonic()
        self._period = SlotStats()  # since the pool last went idle: logged then
        # Claimed items whose call had not started when their task was cancelled (Ctrl-C): no request of theirs
        # left this process, so the runner puts them back without counting them as cut off.
        self.never_sent: set[int] = set()

    def _tick(self) -> None:
        """Account the time since the last change of `busy` or of the feeds held."""
        now = time.monotonic()
        if self._feeds:
            for stats in (self.stats, self._period):
                stats.busy_slot_s += self.busy * (now - self._ticked)
                stats.held_s += now - self._ticked
        self._ticked = now

    @property
    def waiting(self) -> int:
        """Claimed items that cannot have a slot yet: those claimed and not finished beyond the slots."""
        return max(0, self.ahead - self._room)

    async def run(self, item_ids: Sequence[int], claim: ClaimFn, call: CallFn, renew: RenewFn | None = None,
                  renew_after_s: float = math.inf, ended: EndedFn | None = None) -> None:
        """Call every item of `item_ids` that `claim` hands over; return when all of them have ended. A claim
        that fails (after its own retries) stops this feed's claiming and is raised once its calls in flight
        have ended; other feeds go on. An item that waited more than `renew_after_s` for its slot, or more than
        CHECK_ENDED_AFTER_S when `ended` says its job has ended, is called only if `renew` (the claim renewed)
        says it is still this runner's and its job's."""
        feed = Feed(deque(item_ids), claim, call, renew, renew_after_s, ended)
        if feed.drained:
            return
        self._tick()
        self._feeds.append(feed)
        self._fed.set()
        if self._feeder is None or self._feeder.done():
            self._feeder = asyncio.create_task(self._feed_loop())
        await feed.done.wait()
        if feed.error is not None:
            raise feed.error

    async def _feed_loop(self) -> None:
        while True:
            feed = next((f for f in self._feeds if f.todo), None)  # the oldest first: it finishes (and acks) first
            if feed is None:
                if not self._feeds:  # idle: the next run() starts a feeder again
                    period, self._period = self._period, SlotStats()
                    log.info("call slots: %.1f of %d busy on average over %.1f s of work", period.mean_busy,
                             self.concurrency, period.held_s)
                    return
                self._fed.clear()
                await self._fed.wait()
                continue
            want = min(self.chunk, len(feed.todo))
            while self._room < want:
                self._room_freed.clear()
                await self._room_freed.wait()
            if not feed.todo:  # a failed claim of this feed emptied it meanwhile
                continue
            # All the room there is, up to CLAIM_CHUNK: when claims are slow (a busy database) the room that freed
            # meanwhile is taken in one claim, so the slots do not drain waiting for a claim per chunk.
            want = min(max(want, self._room), CLAIM_CHUNK, len(feed.todo))
            chunk = [feed.todo.popleft() for _ in range(want)]
            self._room -= want
            feed.claiming = True  # the feed's last calls may end meanwhile: it is not drained before this claim is
            claimed_at = time.monotonic()  # before the claim's UPDATE: its lease is never older than this says
            try:
                got = await feed.claim(chunk)
            except asyncio.CancelledError:
                # Ctrl-C while the claim ran in its thread: its UPDATE may still commit, leaving these items in
                # flight under this runner with no call started. None of them was sent.
                self.never_sent.update(chunk)
                raise
            except Exception as exc:  # the database stayed away past its retries: this feed stops claiming
                self._give_back(want)
                feed.error = exc
                feed.todo.clear()
                feed.claiming = False
                self._settle(feed)
                continue
            feed.claiming = False
            self.stats.claims += 1
            self._give_back(want - len(got))
            for item_id in chunk:  # in input order; finished items (another worker, a redelivery) were skipped
                if item_id in got:
                    feed.running += 1
                    task = asyncio.create_task(self._one(feed, item_id, got[item_id], claimed_at))
                    self._running.add(task)
                    task.add_done_callback(self._running.discard)
            self.stats.peak_waiting = max(self.stats.peak_waiting, self.waiting)
            self._settle(feed)

    async def _one(self, feed: Feed, item_id: int, claim: Claim, claimed_at: float) -> None:
        sent = False
        try:
            async with self._calls:
                if feed.renew is not None and await self._must_renew(feed, time.monotonic() - claimed_at):
                    if not await feed.renew(item_id, claim):
                        self.stats.lost += 1
                        return
                    self.stats.renewed += 1
                self._tick()
                self.busy += 1
                self.stats.peak_busy = max(self.stats.peak_busy, self.busy)
                try:
                    sent = True
                    await feed.call(item_id, claim)
                finally:
                    self._tick()
                    self.busy -= 1
        except asyncio.CancelledError:
            if not sent:
                self.never_sent.add(item_id)
            raise
        except Exception as exc:  # a bug in recording a result, or a renewal past its retries: the feed fails
            feed.error = feed.error or exc
        finally:
            feed.running -= 1
            self._give_back(1)
            self._settle(feed)

    @staticmethod
    async def _must_renew(feed: Feed, waited_s: float) -> bool:
        return waited_s > feed.renew_after_s or (waited_s > CHECK_ENDED_AFTER_S and await feed.job_ended())

    def _give_back(self, n: int) -> None:
        if n:
            self._room += n
            self._room_freed.set()

    def _settle(self, feed: Feed) -> None:
        if feed.drained and not feed.done.is_set():
            self._tick()
            self._feeds.remove(feed)
            feed.done.set()
            self._fed.set()  # the feeder may be idle now
