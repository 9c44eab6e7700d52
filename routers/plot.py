"""The quality-vs-strong-fraction curve of each router, in one PNG."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from routers.evaluate import Curve


def plot_curves(curves: dict[str, Curve], quality_strong: float, quality_weak: float, out: Path,
                title: str = "") -> Path:
    # Imported here: the backend must be chosen before pyplot loads, and only plotting needs matplotlib.
    import matplotlib

    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 5), dpi=120)
    for name, c in curves.items():
        step = max(1, len(c.fraction) // 400)
        style = {"random": ":", "oracle": "--"}.get(name, "-")
        ax.plot(c.fraction[::step] * 100, c.quality[::step] * 100, style, label=name, linewidth=1.6)
    ax.axhline(quality_strong * 100, color="grey", linewidth=0.8)
    ax.axhline(quality_weak * 100, color="grey", linewidth=0.8)
    ax.text(1, quality_strong * 100, " strong only", va="bottom", fontsize=8, color="grey")
    ax.text(1, quality_weak * 100, " weak only", va="bottom", fontsize=8, color="grey")
    ax.set_xlabel("strong model calls (%)")
    ax.set_ylabel("quality (%)")
    ax.set_xlim(0, 100)
    ax.set_ylim(min(quality_weak, float(np.min([c.quality.min() for c in curves.values()]))) * 100 - 2,
                max(float(np.max([c.quality.max() for c in curves.values()])), quality_strong) * 100 + 2)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    ax.set_title(title)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)
    return out
