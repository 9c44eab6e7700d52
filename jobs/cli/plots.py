"""Cost and quality over time, in one PNG: spend per period (strong and weak stacked) against what sending
everything strong would have cost, and the held-out APGR of each router version when it was trained."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from db.models import RouterVersion
from jobs.services.spend import PeriodSpend


def plot_cost_and_quality(periods: Sequence[PeriodSpend], versions: Sequence[RouterVersion], out: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (cost_ax, quality_ax) = plt.subplots(2, 1, figsize=(8, 6), dpi=120)
    labels = [p.period for p in periods]
    x = range(len(periods))
    cost_ax.bar(x, [p.weak_cost_usd for p in periods], label="weak")
    cost_ax.bar(x, [p.strong_cost_usd for p in periods], bottom=[p.weak_cost_usd for p in periods], label="strong")
    cost_ax.plot(x, [p.all_strong_cost_usd for p in periods], "k--", marker="o", label="all strong (estimate)")
    cost_ax.set_xticks(list(x), labels, rotation=30, ha="right", fontsize=8)
    cost_ax.set_ylabel("dollars")
    cost_ax.set_title("spend per period")
    cost_ax.legend(fontsize=8)
    ordered = sorted((v for v in versions if v.apgr is not None), key=lambda v: v.created_at)
    if ordered:
        quality_ax.plot([v.created_at for v in ordered], [v.apgr for v in ordered], marker="o", label="candidate")
        served = [v for v in ordered if v.promoted_at]
        quality_ax.scatter([v.created_at for v in served], [v.apgr for v in served], s=80, marker="*",
                           color="C2", zorder=3, label="promoted")
        quality_ax.legend(fontsize=8)
    else:
        quality_ax.text(0.5, 0.5, "no router versions trained yet", ha="center", va="center",
                        transform=quality_ax.transAxes)
        quality_ax.set_xticks([])
        quality_ax.set_yticks([])
    quality_ax.set_ylabel("held-out APGR")
    quality_ax.set_title("router quality over time")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out
