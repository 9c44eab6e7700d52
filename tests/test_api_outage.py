"""During a database outage the API answers 503 with Retry-After, not 500, and serves again once the database
is back (issue 14, point 9). The outage is real: the API reaches PostgreSQL through a TCP relay of this test's
own, which it cuts (every connection dropped, new ones refused) and restores; the shared server keeps running."""

from __future__ import annotations

import socket
import threading
from urllib.parse import urlsplit

from conftest import make_settings
from fastapi.testclient import TestClient

from db.session import open_database
from jobs.api import create_app
from jobs.services.tenants import create_tenant


class Relay:
    """Forwards 127.0.0.1:<port> to a server; `cut()` drops every connection and refuses new ones, `restore()`
    listens again on the same port."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = 0
        self.links: list[socket.socket] = []
        self.lock = threading.Lock()
        self.listener: socket.socket | None = None
        self.restore()

    def restore(self) -> None:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port, self.listener = listener.getsockname()[1], listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # cut
                return
            server = socket.create_connection(self.target)
            with self.lock:
                self.links += [client, server]
            for a, b in ((client, server), (server, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        for s in (source, sink):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def cut(self) -> None:
        assert self.listener is not None
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread (close alone does not, on Linux)
        except OSError:
            pass
        self.listener.close()
        with self.lock:
            links, self.links = self.links, []
        for s in links:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            s.close()


def test_a_database_outage_is_a_503_with_retry_after_and_the_api_recovers(postgres_url, tmp_path, loopback):
    url = urlsplit(postgres_url)
    relay = Relay((url.hostname or "127.0.0.1", url.port or 5432))
    through = postgres_url.replace(f"{url.hostname}:{url.port}", f"127.0.0.1:{relay.port}")
    settings = make_settings(tmp_path / "home", through, loopback)
    sf = open_database(postgres_url)
    _, key = create_tenant(sf, "acme")
    auth = {"Authorization": f"Bearer {key}"}
    try:
        with TestClient(create_app(settings), raise_server_exceptions=False) as client:
            assert client.get("/v1/jobs", headers=auth).status_code == 200
            relay.cut()
            for method, path, kwargs in (
                ("GET", "/v1/jobs", {}), ("GET", "/v1/spend", {}), ("GET", "/v1/jobs/job_x", {}),
                ("POST", "/v1/jobs", {"files": {"file": ("b.jsonl", b'{"prompt": "x"}\n')}}),
                ("GET", "/v1/files", {}), ("GET", "/v1/batches", {}),
            ):
                r = client.request(method, path, headers=auth, **kwargs)
                assert r.status_code == 503, (method, path, r.status_code, r.text)
                assert r.headers["Retry-After"].isdigit(), (path, r.headers)
                assert "database is not available" in r.text and "SELECT" not in r.text and key not in r.text
                if path.startswith(("/v1/files", "/v1/batches")):  # OpenAI's envelope there
                    assert r.json()["error"]["type"] == "server_error"
            relay.restore()
            assert client.get("/v1/jobs", headers=auth).status_code == 200
    finally:
        relay.cut()
