"""Tenants and their keys: create (a taken name is one line, never a traceback), list, revoke and rotate, on the
CLI and on the API's admin path; a revoked or rotated-away key is refused by the very next request."""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from db import catalog
from db.session import open_database
from jobs.api import create_app
from jobs.cli.app import app as cli_app
from jobs.cli.context import run_app
from jobs.services import tenants
from routeyard.errors import Conflict, InvalidInput

ADMIN_KEY = "admin-key-for-tests-0123456789"


@pytest.fixture
def cli(monkeypatch, tmp_path, database_url, capsys):
    """`routeyard ...` in this process, on a database of the test's own: (exit code, stdout, stderr)."""
    monkeypatch.setenv("ROUTEYARD_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("ROUTEYARD_DATABASE_URL", database_url)

    def run(*args: str) -> tuple[int, str, str]:
        capsys.readouterr()
        with pytest.raises(SystemExit) as exit_info:
            run_app(cli_app, list(args))
        out = capsys.readouterr()
        return exit_info.value.code or 0, out.out, out.err

    return run


def test_a_taken_tenant_name_is_one_line_naming_it_not_a_traceback(cli, database_url):
    code, first, _ = cli("tenant", "create", "acme")
    key = first.strip().splitlines()[-1]
    assert code == 0 and key.startswith("ry_")
    code, out, err = cli("tenant", "create", "acme")
    assert code == 2 and out == ""
    assert err.strip() == "error: a tenant named 'acme' already exists; pick another name"
    assert tenants.hash_key(key) not in err and "Traceback" not in err and "IntegrityError" not in err
    assert first.strip() == key  # stdout is the key alone: KEY=$(routeyard tenant create NAME)


def test_a_name_taken_between_the_check_and_the_commit_is_the_same_conflict(database_url, monkeypatch):
    """Two `tenant create acme` at once: the loser's INSERT breaks the unique constraint."""
    sf = open_database(database_url)
    tenants.create_tenant(sf, "acme")
    real = catalog.tenant_by_name
    calls = iter([None])
    monkeypatch.setattr(catalog, "tenant_by_name", lambda s, name: next(calls, real(s, name)))
    with pytest.raises(Conflict, match="a tenant named 'acme' already exists; pick another name"):
        tenants.create_tenant(sf, "acme")


@pytest.mark.parametrize(("name", "message"), [("  ", "cannot be empty"), ("tn_0123", "cannot start with 'tn_'"),
                                               ("x" * 201, "201 characters long; at most 200"),
                                               ("a\nb", "control character")])
def test_bad_tenant_names_say_what_is_wrong(database_url, name, message):
    with pytest.raises(InvalidInput, match=message):
        tenants.create_tenant(open_database(database_url), name)


def test_list_revoke_and_rotate_on_the_cli(cli, database_url):
    sf = open_database(database_url)
    _, old_a = tenants.create_tenant(sf, "team-a")
    b_id, key_b = tenants.create_tenant(sf, "team-b")

    code, out, _ = cli("tenant", "list", "--json")
    rows = {r["name"]: r for r in json.loads(out)}
    assert code == 0 and set(rows) == {"local", "team-a", "team-b"}
    assert rows["team-a"]["state"] == "active" and rows["local"]["state"] == "no key" and rows["team-b"]["jobs"] == 0
    assert not any(key in out for key in (old_a, key_b, tenants.hash_key(old_a)))

    code, out, _ = cli("tenant", "revoke", "team-a")
    assert code == 0 and "revoked" in out
    with sf() as session:
        assert tenants.tenant_for_key(session, old_a) is None
    assert cli("tenant", "revoke", "team-a")[0] == 0  # twice: nothing changes
    code, out, _ = cli("tenant", "list")
    assert code == 0 and "revoked" in out and "team-a" in out

    code, out, err = cli("tenant", "rotate", b_id)  # by id
    new_b = out.strip()
    assert code == 0 and new_b.startswith("ry_") and new_b != key_b and "old key is refused" in err
    with sf() as session:
        assert tenants.tenant_for_key(session, key_b) is None
        assert tenants.tenant_for_key(session, new_b).id == b_id

    code, out, _ = cli("tenant", "rotate", "team-a")  # a revoked tenant gets a key again
    with sf() as session:
        assert tenants.tenant_for_key(session, out.strip()).name == "team-a"

    for args, message in [(("revoke", "nobody"), "error: no tenant 'nobody' (by name or id)"),
                          (("rotate", "local"), "error: 'local' is the tenant of jobs submitted from the CLI")]:
        code, _, err = cli("tenant", *args)
        assert code == 2 and err.strip().startswith(message) and len(err.strip().splitlines()) == 1


def test_a_revoked_or_rotated_key_is_refused_by_the_next_request(settings):
    sf = open_database(settings.resolved_database_url)
    _, key = tenants.create_tenant(sf, "acme")
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"}).status_code == 200
        _, new = tenants.rotate_key(sf, "acme")
        old = client.get("/v1/jobs", headers={"Authorization": f"Bearer {key}"})
        assert old.status_code == 401 and old.json()["detail"] == "unknown or revoked API key"
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {new}"}).status_code == 200
        tenants.revoke_tenant(sf, "acme")
        assert client.get("/v1/jobs", headers={"Authorization": f"Bearer {new}"}).status_code == 401


def test_the_admin_path_manages_tenants_behind_its_own_key(settings):
    with TestClient(create_app(settings)) as client:  # no ROUTEYARD_ADMIN_KEY: the admin path is off
        off = client.get("/v1/admin/tenants", headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        assert off.status_code == 404 and "ROUTEYARD_ADMIN_KEY" in off.json()["detail"]

    admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
    with TestClient(create_app(settings.model_copy(update={"admin_key": SecretStr(ADMIN_KEY)}))) as client:
        assert client.get("/v1/admin/tenants").status_code == 401
        made = client.post("/v1/admin/tenants", headers=admin, json={"name": "acme"})
        assert made.status_code == 201 and made.json()["tenant"]["state"] == "active"
        key = made.json()["api_key"]
        tenant = {"Authorization": f"Bearer {key}"}
        assert client.get("/v1/jobs", headers=tenant).status_code == 200
        assert client.get("/v1/admin/tenants", headers=tenant).status_code == 403  # a tenant's key is not admin
        taken = client.post("/v1/admin/tenants", headers=admin, json={"name": "acme"})
        assert taken.status_code == 409 and taken.json()["detail"] == ("a tenant named 'acme' already exists; "
                                                                       "pick another name")
        bad = client.post("/v1/admin/tenants", headers=admin, json={"name": "tn_x"})
        assert bad.status_code == 422 and "cannot start with 'tn_'" in bad.json()["detail"]
        names = {t["name"]: t for t in client.get("/v1/admin/tenants", headers=admin).json()}
        assert set(names) == {"local", "acme"} and "api_key" not in names["acme"]

        rotated = client.post("/v1/admin/tenants/acme/rotate", headers=admin).json()
        assert client.get("/v1/jobs", headers=tenant).status_code == 401
        new = {"Authorization": f"Bearer {rotated['api_key']}"}
        assert client.get("/v1/jobs", headers=new).status_code == 200
        revoked = client.post(f"/v1/admin/tenants/{rotated['tenant']['id']}/revoke", headers=admin)
        assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"
        assert client.get("/v1/jobs", headers=new).status_code == 401
        assert client.post("/v1/admin/tenants/nobody/revoke", headers=admin).status_code == 404


def test_a_short_admin_key_is_refused_at_start(settings):
    with pytest.raises(InvalidInput, match="ROUTEYARD_ADMIN_KEY is 5 characters long; use at least 16"):
        create_app(settings.model_copy(update={"admin_key": SecretStr("short")}))
