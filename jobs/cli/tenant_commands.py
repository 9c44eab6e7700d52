"""`routeyard tenant ...`: the HTTP API's tenants and their keys (create, list, revoke, rotate).

A key is printed once, on stdout alone on its line (so `KEY=$(routeyard tenant create acme | tail -1)` works);
only its SHA-256 is stored.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Annotated

import typer
from rich.table import Table

from jobs.cli.context import cli_context, console, err
from jobs.services.tenants import create_tenant, list_tenants, revoke_tenant, rotate_key

app = typer.Typer(help="Tenants of the HTTP API and their keys.", no_args_is_help=True)
NameOrId = Annotated[str, typer.Argument(help="The tenant's name or id.")]


def _when(t: datetime | None) -> str:
    return t.strftime("%Y-%m-%d %H:%M:%S") if t else "-"


@app.command("create")
def tenant_create(ctx: typer.Context, name: str) -> None:
    """Create a tenant and print its API key (shown once; only its hash is stored)."""
    tenant_id, key = create_tenant(cli_context(ctx).db, name)
    err.print(f"tenant {tenant_id} ({name.strip()}); API key, shown once:")
    print(key)


@app.command("list")
def tenant_list(ctx: typer.Context, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Tenants, their key's state (active, revoked) and how many jobs each owns. Keys are never shown."""
    views = list_tenants(cli_context(ctx).db)
    if as_json:
        print(json.dumps([v.to_dict() for v in views], indent=2))
        return
    table = Table()
    for col in ("id", "name", "key", "key issued (UTC)", "revoked (UTC)", "jobs"):
        table.add_column(col)
    for v in views:
        table.add_row(v.id, v.name, v.state, _when(v.key_issued_at), _when(v.revoked_at), str(v.jobs))
    console.print(table)


@app.command("revoke")
def tenant_revoke(ctx: typer.Context, tenant: NameOrId) -> None:
    """Refuse the tenant's API key from now on. Its jobs are kept; `tenant rotate` gives it a new key."""
    view = revoke_tenant(cli_context(ctx).db, tenant)
    console.print(f"tenant {view.id} ({view.name}) revoked: its API key is refused from now on; its {view.jobs} "
                  f"job(s) are kept (`routeyard tenant rotate {view.name}` issues a new key)")


@app.command("rotate")
def tenant_rotate(ctx: typer.Context, tenant: NameOrId) -> None:
    """Give the tenant a new API key (printed once); the old one is refused from now on."""
    view, key = rotate_key(cli_context(ctx).db, tenant)
    err.print(f"tenant {view.id} ({view.name}): new API key, shown once; the old key is refused from now on:")
    print(key)
