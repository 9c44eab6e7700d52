"""The quality report as one PNG: per tenant, held-out APGR of each router version when it was trained
(promoted ones starred), the share of shadow pairs the judge found the weak answer as good, and realised cost
against all-strong, per day."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Any

from jobs.services.quality import QualityReport, by_tenant


def plot_quality(report: QualityReport, out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig = draw_quality(report)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def draw_quality(report: QualityReport) -> Any:
    """The report's figure (matplotlib's Agg backend must be chosen before)."""
    import matplotlib.pyplot as plt

    fig, (apgr_ax, share_ax, cost_ax) = plt.subplots(3, 1, figsize=(9, 9), dpi=120)
    for i, (tenant, versions) in enumerate(sorted(by_tenant(report).items())):
        color = f"C{i % 10}"
        trained = [v for v in versions if v.trained_at and v.heldout_apgr is not None]
        if trained:
            when = [datetime.fromisoformat(v.trained_at) for v in trained if v.trained_at]
            apgr_ax.plot(when, [v.heldout_apgr for v in trained], marker="o", color=color, label=tenant)
            promoted = [(datetime.fromisoformat(v.trained_at), v.heldout_apgr) for v in trained
                        if v.promoted_at and v.trained_at]
            if promoted:
                apgr_ax.scatter(*zip(*promoted, strict=True), s=120, marker="*", color=color, zorder=3)
        days = [d for d in report.days if d["tenant"] == tenant]
        if days:
            x = [d["day"] for d in days]
            share_ax.plot(x, [d["weak_as_good_share"] for d in days], marker="o", color=color, label=tenant)
            cost_ax.plot(x, [d["cost_usd"] + d["loop_cost_usd"] for d in days], marker="o", color=color,
                         label=f"{tenant}: realised (incl. shadow + judge)")
            # marked, not only dashed: a tenant's first day is one point, and a dashed line of one point is not drawn
            cost_ax.plot(x, [d["all_strong_cost_usd"] for d in days], "--", marker="x", color=color,
                         label=f"{tenant}: all strong")
    apgr_ax.set_title("held-out APGR of each router version (star: promoted)")
    apgr_ax.set_ylabel("APGR")
    share_ax.set_title("shadow pairs the judge found the weak answer as good")
    share_ax.set_ylabel("share")
    share_ax.set_ylim(0, 1)
    cost_ax.set_title("realised cost against all-strong, per day")
    cost_ax.set_ylabel("dollars")
    for ax in (apgr_ax, share_ax, cost_ax):
        if ax.has_data():
            ax.legend(fontsize=7)
        else:
            ax.text(0.5, 0.5, "nothing yet", ha="center", va="center", transform=ax.transAxes)
        ax.tick_params(axis="x", labelsize=7, rotation=20)
    fig.tight_layout()
    return fig
