"""`routeyard report quality` (and GET /v1/reports/quality): what the learning loop gained, per tenant and per
router version. For each version: its held-out APGR when it was trained (and the serving router's on the same
prompts), the items it routed, the share of its shadow pairs the judge found the weak answer as good, and the
realised cost (routed calls, plus the loop's own: shadow and judge calls) against sending everything strong.
Per day the same, so a tenant's quality and cost can be followed over time."""

from __future__ import annotations

from collections import defaultdict
from dataclasses import asdict, dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from db import catalog
from db.models import RouterVersion, Tenant
from db.quality import JudgedRow, UsageRow, judged_rows, usage_rows
from jobs.services.versions import version_rows
from routeyard.pricing import cost_usd, price_for
from routeyard.settings import Settings

GLOBAL = "global"  # the owner of the global default's versions


@dataclass
class Totals:
    items: int = 0
    cost_usd: float = 0.0  # the routed calls
    loop_cost_usd: float = 0.0  # shadow and judge calls: what the feedback cost
    all_strong_cost_usd: float = 0.0
    judged: int = 0
    weak_as_good: int = 0
    judge_errors: int = 0

    def add_usage(self, row: UsageRow, settings: Settings) -> None:
        self.items += row.items
        self.cost_usd += row.cost_usd
        self.loop_cost_usd += row.shadow_cost_usd
        if row.tier == "strong":
            self.all_strong_cost_usd += row.cost_usd
        else:  # the same tokens at the strong model's price, as the spend report estimates it
            self.all_strong_cost_usd += cost_usd(price_for(row.strong_model, settings.price_table),
                                                 row.prompt_tokens, row.completion_tokens)

    def add_judged(self, row: JudgedRow) -> None:
        self.judged += row.judged
        self.weak_as_good += row.weak_as_good
        self.judge_errors += row.errors
        self.loop_cost_usd += row.cost_usd

    def view(self) -> dict[str, Any]:
        spent = self.cost_usd + self.loop_cost_usd
        return {**asdict(self), "weak_as_good_share": self.weak_as_good / self.judged if self.judged else None,
                "saving_pct": 100.0 * (self.all_strong_cost_usd - spent) / self.all_strong_cost_usd
                if self.all_strong_cost_usd else None}


@dataclass
class VersionQuality:
    tenant: str  # its name, or "global"
    router: str  # name@version
    trained_at: str | None  # None: not trained here (the shipped router)
    promoted_at: str | None
    serving: bool
    heldout_apgr: float | None
    serving_apgr_then: float | None  # the router it was compared with, on the same held-out prompts
    rows: int | None
    decision: str | None
    totals: Totals = field(default_factory=Totals)

    def to_dict(self) -> dict[str, Any]:
        d = {k: v for k, v in asdict(self).items() if k != "totals"}
        return {**d, **self.totals.view()}


@dataclass(frozen=True)
class QualityReport:
    versions: list[VersionQuality]
    days: list[dict[str, Any]]  # tenant, day, router(s) used, and the totals of that day

    def to_dict(self) -> dict[str, Any]:
        return {"versions": [v.to_dict() for v in self.versions], "days": self.days}


def quality_report(session: Session, settings: Settings, tenant_id: str | None = None) -> QualityReport:
    """Every tenant's (or one tenant's: then its own versions and the global default's) versions, oldest first,
    and its days."""
    names = {t.id: t.name for t in session.query(Tenant)}
    versions: dict[tuple[str, str], VersionQuality] = {}

    def version_row(owner: str, v: RouterVersion) -> VersionQuality:
        return VersionQuality(owner, f"{v.router}@{v.version}", v.created_at.isoformat(),
                              v.promoted_at.isoformat() if v.promoted_at else None, v.serving, v.apgr,
                              v.baseline_apgr, (v.data or {}).get("rows"), v.decision)

    owners = [tenant_id] if tenant_id is not None else [*names]
    for owner in owners:
        for v in catalog.list_versions(session, owner):
            versions[(owner, f"{v.router}@{v.version}")] = version_row(owner, v)
    global_rows = {f"{v.router}@{v.version}": v for v in catalog.list_versions(session, None)}
    if tenant_id is None:
        for label, v in global_rows.items():
            versions[(GLOBAL, label)] = version_row(GLOBAL, v)
    days: dict[tuple[str, str], dict[str, Any]] = {}

    def entry(owner: str, label: str) -> VersionQuality:
        key = (owner, label)
        if key not in versions:  # a version that is not the tenant's own: the global default's, or shipped
            known = global_rows.get(label)
            versions[key] = (version_row(owner, known) if known is not None else
                             VersionQuality(owner, label, None, None, False, None, None, None, "not trained here"))
            if known is not None:
                versions[key].decision = f"global default: {known.decision}"
        return versions[key]

    def day(owner: str, when: str, label: str) -> Totals:
        d = days.setdefault((owner, when), {"tenant": names.get(owner, owner), "day": when, "routers": set(),
                                            "totals": Totals()})
        d["routers"].add(label)
        totals: Totals = d["totals"]
        return totals

    for row in usage_rows(session, tenant_id):
        entry(row.tenant_id, row.router_version).totals.add_usage(row, settings)
        day(row.tenant_id, row.day, row.router_version).add_usage(row, settings)
    for judged in judged_rows(session, tenant_id):
        entry(judged.tenant_id, judged.router_version).totals.add_judged(judged)
        day(judged.tenant_id, judged.day, judged.router_version).add_judged(judged)
    # what serves each owner is decided once, as `router versions` decides it: its own promoted version, else the
    # global default's, else the shipped router (which serves before any promotion, though never trained here)
    for owner in [*owners, *([GLOBAL] if tenant_id is None else [])]:
        serves = next(r for r in version_rows(session, settings, None if owner == GLOBAL else owner) if r.serving)
        label = f"{serves.router}@{serves.version}"
        for (who, _), vq in versions.items():
            if who == owner:
                vq.serving = vq.router == label
        if (owner, label) not in versions:  # listed even before it routed anything: the report says what serves
            entry(owner, label)
        versions[(owner, label)].serving = True
    for vq in versions.values():
        vq.tenant = names.get(vq.tenant, vq.tenant)
    ordered = sorted(versions.values(), key=lambda vq: (vq.tenant, vq.trained_at or "", vq.router))
    per_day = [{"tenant": d["tenant"], "day": d["day"], "routers": sorted(d["routers"]), **d["totals"].view()}
               for _, d in sorted(days.items(), key=lambda kv: (kv[1]["tenant"], kv[0][1]))]
    return QualityReport(ordered, per_day)


def by_tenant(report: QualityReport) -> dict[str, list[VersionQuality]]:
    out: dict[str, list[VersionQuality]] = defaultdict(list)
    for v in report.versions:
        out[v.tenant].append(v)
    return dict(out)
