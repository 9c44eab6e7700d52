"""`report quality` and `router versions` agree on what serves: the shipped router before any promotion (listed
even before it routed anything), a promoted global version after, a tenant's own promoted version for it."""

import json

from test_cli import cli_env, routeyard

from db import catalog
from db.models import RouterVersion
from db.session import open_database
from jobs.services.quality import GLOBAL, quality_report
from jobs.services.tenants import create_tenant
from jobs.services.versions import shipped_router, version_rows


def serving(report, tenant):
    return [v.router for v in report.versions if v.tenant == tenant and v.serving]


def versions_serving(session, settings, tenant_id):
    return [f"{r.router}@{r.version}" for r in version_rows(session, settings, tenant_id) if r.serving]


def test_the_quality_report_serves_what_router_versions_serves(settings):
    sf = open_database(settings.resolved_database_url)
    acme, _ = create_tenant(sf, "acme")
    shipped = shipped_router(settings).label
    with sf() as session:
        report = quality_report(session, settings)
        assert serving(report, GLOBAL) == [shipped] == versions_serving(session, settings, None)
        assert serving(report, "acme") == [shipped] == versions_serving(session, settings, acme)
        catalog.add_version(session, RouterVersion(router="random", version="g1", path="random", decision="promoted"),
                            serve=True)
        catalog.add_version(session, RouterVersion(tenant_id=acme, router="random", version="a1", path="random",
                                                   decision="promoted"), serve=True)
        session.commit()
    with sf() as session:
        report = quality_report(session, settings)
        assert serving(report, GLOBAL) == ["random@g1"] == versions_serving(session, settings, None)
        assert serving(report, "acme") == ["random@a1"] == versions_serving(session, settings, acme)
        assert not any(v.serving for v in report.versions if v.router == shipped)  # listed only where it serves
        mine = quality_report(session, settings, acme)
        assert serving(mine, "acme") == ["random@a1"] and {v.tenant for v in mine.versions} == {"acme"}


def test_report_quality_json_marks_the_shipped_router_serving_before_any_promotion(tmp_path, database_url):
    env = cli_env(tmp_path / "home", database_url)
    versions = json.loads(routeyard("router", "versions", "--json", env=env).stdout)
    report = json.loads(routeyard("report", "quality", "--json", env=env).stdout)
    listed = versions if isinstance(versions, list) else versions["versions"]
    served = [f"{v['router']}@{v['version']}" for v in listed if v["serving"]]
    marked = [(v["tenant"], v["router"]) for v in report["versions"] if v["serving"]]
    assert len(served) == 1 and marked and {router for _, router in marked} == set(served)
    assert len({tenant for tenant, _ in marked}) == len(marked)  # one serving version per tenant


def test_the_cost_panel_draws_all_strong_on_a_tenants_first_day():
    """A trial found the dashed all-strong line missing on the first day: one point of a dashed line is not drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from jobs.cli.quality_plot import draw_quality
    from jobs.services.quality import QualityReport, Totals, VersionQuality

    day = {"tenant": "acme", "day": "2026-11-26", "routers": ["linear@abc"],
           **Totals(items=10, cost_usd=0.1, all_strong_cost_usd=0.5).view()}
    serving = VersionQuality("acme", "linear@abc", None, None, True, None, None, None, "not trained here")
    fig = draw_quality(QualityReport([serving], [day]))
    try:
        cost_ax = fig.axes[2]
        (line,) = [ln for ln in cost_ax.get_lines() if ln.get_label() == "acme: all strong"]
        assert list(line.get_ydata()) == [0.5]
        assert line.get_marker() not in (None, "None", "", " ")  # a single point is visible only as a marker
    finally:
        plt.close(fig)
