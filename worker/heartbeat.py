"""This process's heartbeat: one runner id (host:pid:random) per process and database, beaten by a daemon
thread every `Settings.heartbeat_s` (db/runners.py says what a missing beat leads to).

`steady` says whether the beats have reached the database for the last `dead_after_s`: the reconciler
releases other runners' items only then. After a database outage every runner's last beat is old, and the
ones that are alive need a moment to beat again; a reconciler that itself just got the database back waits
that long instead of taking their calls away.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session, sessionmaker

from db import runners
from routeyard.settings import Settings

log = logging.getLogger(__name__)


class Heartbeat:
    def __init__(self, sf: sessionmaker[Session], kind: str, every_s: float, dead_after_s: float) -> None:
        self.sf, self.kind, self.every_s, self.dead_after_s = sf, kind, every_s, dead_after_s
        self.id = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.healthy_since: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f"routeyard-heartbeat-{kind}", daemon=True)

    def start(self) -> Heartbeat:
        self.beat()
        self._thread.start()
        return self

    def beat(self) -> bool:
        try:
            with self.sf() as session:
                runners.beat(session, self.id, self.kind)
                session.commit()
        except Exception as exc:  # the database is away; the next beat tries again
            if self.healthy_since is not None:
                log.warning("heartbeat of %s failed: %s", self.id, type(exc).__name__)
            self.healthy_since = None
            return False
        if self.healthy_since is None:
            self.healthy_since = time.monotonic()
        return True

    @property
    def steady(self) -> bool:
        return self.healthy_since is not None and time.monotonic() - self.healthy_since >= self.dead_after_s

    def _loop(self) -> None:
        while not self._stop.wait(self.every_s):
            self.beat()

    def stop(self) -> None:
        """A clean exit: what this runner held is free at once."""
        self._stop.set()
        try:
            with self.sf() as session:
                runners.forget(session, self.id)
                session.commit()
        except Exception:  # it will count as dead after dead_after_s anyway
            log.warning("could not deregister runner %s", self.id)


_LOCK = threading.Lock()
_BEATS: dict[tuple[int, str, str], Heartbeat] = {}
_USERS: dict[tuple[int, str, str], int] = {}


def _key(sf: sessionmaker[Session], kind: str) -> tuple[int, str, str]:
    bind = sf.kw.get("bind")
    return os.getpid(), str(bind.url) if bind is not None else str(id(sf)), kind


def process_heartbeat(sf: sessionmaker[Session], settings: Settings, kind: str) -> Heartbeat:
    """This process's heartbeat on this database, for the process's life (a worker; a forked child gets its
    own)."""
    key = _key(sf, kind)
    with _LOCK:
        found = _BEATS.get(key)
        if found is None:
            found = _BEATS[key] = Heartbeat(sf, kind, settings.heartbeat_s, settings.dead_after_s).start()
        return found


@contextmanager
def beating(sf: sessionmaker[Session], settings: Settings, kind: str) -> Iterator[Heartbeat]:
    """This process's heartbeat while the block runs (an embedded job): shared by the jobs that run at once,
    stopped (and the runner deregistered) when the last of them ends, so an idle process beats nothing."""
    key = _key(sf, kind)
    with _LOCK:
        _USERS[key] = _USERS.get(key, 0) + 1
        found = _BEATS.get(key)
        if found is None:
            found = _BEATS[key] = Heartbeat(sf, kind, settings.heartbeat_s, settings.dead_after_s).start()
    try:
        yield found
    finally:
        with _LOCK:
            _USERS[key] -= 1
            last = _USERS[key] == 0
            if last:
                del _USERS[key], _BEATS[key]
        if last:
            found.stop()
