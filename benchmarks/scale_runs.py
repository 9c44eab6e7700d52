"""Several runs of benchmarks/scale.py, side by side: each size's calls items/s per run and the median, and
each run's slowest size over its fastest (the issue's "within 20% across sizes" is a ratio within one run).

    python benchmarks/scale_runs.py OUT.md RUN.json [RUN.json ...]
"""

from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path


def main() -> None:
    out, runs = Path(sys.argv[1]), [json.loads(Path(p).read_text()) for p in sys.argv[2:]]
    modes = sorted({(r["mode"], r["items"]) for run in runs for r in run["rows"]})
    lines = [f"# Scale, {len(runs)} runs: calls items/s", "",
             f"Runs: {', '.join(Path(p).name for p in sys.argv[2:])} ({', '.join(r['when'][:16] for r in runs)}); "
             f"{runs[0]['cpus']} CPUs; random router, loopback at {runs[0]['latency_ms']:g} ms, "
             f"{runs[0]['concurrency']} calls in flight.", "",
             "| mode | items | " + " | ".join(f"run {i + 1}" for i in range(len(runs)))
             + " | median | peak RSS MB (max) |",
             "|---|---:|" + "---:|" * len(runs) + "---:|---:|"]
    for mode, items in modes:
        rows = [r for run in runs for r in run["rows"] if (r["mode"], r["items"]) == (mode, items)]
        rates = [r["calls_items_per_s"] for r in rows]
        lines.append(f"| {mode} | {items:,} | " + " | ".join(f"{v:.1f}" for v in rates)
                     + f" | {statistics.median(rates):.1f} | {max(r['run_peak_rss_mb'] for r in rows):.0f} |")
    lines += ["", "Within each run, slowest size / fastest size (per mode):", ""]
    for mode in sorted({m for m, _ in modes}):
        ratios = []
        for run in runs:
            rates = [r["calls_items_per_s"] for r in run["rows"] if r["mode"] == mode]
            ratios.append(min(rates) / max(rates))
        lines.append(f"- {mode}: " + ", ".join(f"{v:.2f}" for v in ratios))
    out.write_text("\n".join(lines) + "\n")
    print(out.read_text())


if __name__ == "__main__":
    main()
