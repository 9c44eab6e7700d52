"""Does a router move toward a user's traffic as its feedback arrives? The learning curve of the default router.

Scenario: the router is trained on base rows, then a new domain's traffic arrives with judged outcomes.
  gsm8k          base: all of MMLU; new domain: GSM8K
  mmlu-<domain>  base: GSM8K + the other three MMLU domains; new domain: that MMLU domain (benchmarks/protocols.py)
For each repeat, a fixed test share of the new domain is set aside; n = 0, 100, 300, 1000 of the remaining rows
arrive as the user's rows (as judged feedback would). Three routers are scored on the test rows:
  base+user   base rows + the user's rows as `focus_groups` (a domain correction chosen by validation on them)
  user only   the user's rows alone
  base only   the n = 0 router
`routeyard retrain` uses the same mechanism for stored feedback. The base rows' L2 strength is chosen once per
domain by the router's own validation (it depends on the base rows only) and reused for every repeat and n;
each repeat is another draw of the test rows and of the n user rows. Reported: mean and standard deviation
over repeats (APGR on a few hundred prompts moves by a few hundredths from draw to draw).

    python benchmarks/router_learning.py [--router linear] [--domains gsm8k,mmlu-stem] [--repeats 5]
Writes benchmarks/results/router_learning.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from benchmarks.protocols import domain_of  # noqa: E402
from routers.base import RouterRuntime, TrainOptions  # noqa: E402
from routers.data import Outcome, outcome_to_preference, read_routellm_evals  # noqa: E402
from routers.evaluate import metrics  # noqa: E402
from routers.registry import DEFAULT_ROUTER, train_router  # noqa: E402

DATA = Path(os.environ.get("ROUTEYARD_DATA", ROOT.parent / "shared" / "data")) / "routellm-evals"
SIZES = (0, 100, 300, 1000)
USER = "user-traffic"  # the group the user's rows carry, named in focus_groups


def split(rows: list[Outcome], domain: str) -> tuple[list[Outcome], list[Outcome]]:
    """(base rows, new-domain rows)."""
    if domain == "gsm8k":
        return [r for r in rows if r.group != "gsm8k"], [r for r in rows if r.group == "gsm8k"]
    held = domain.removeprefix("mmlu-")
    return [r for r in rows if domain_of(r.group) != held], [r for r in rows if domain_of(r.group) == held]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--router", default=DEFAULT_ROUTER)
    parser.add_argument("--domains", default="gsm8k,mmlu-stem")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--test-rows", type=int, default=300, help="new-domain rows kept for testing per repeat")
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "cache")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()
    runtime = RouterRuntime(device="cpu", cache_dir=args.cache)
    rows = read_routellm_evals(DATA)
    results: dict[str, dict] = {}
    for domain in args.domains.split(","):
        base, new = split(rows, domain)
        curves: dict[str, dict[int, list[float]]] = {"base+user": {}, "user only": {}, "base only": {}}
        base_prefs = [outcome_to_preference(o) for o in base]
        start = time.perf_counter()
        base_router = train_router(args.router, base_prefs, runtime, TrainOptions(seed=0))
        fixed = {k: getattr(base_router.config, k) for k in ("c", "l2")
                 if getattr(base_router.config, k, None) is not None}
        for rep in range(args.repeats):
            order = np.random.default_rng(rep).permutation(len(new))
            test = [new[i] for i in order[: args.test_rows]]
            pool = [new[i] for i in order[args.test_rows :]]
            base_apgr = metrics(base_router.win_rate([o.prompt for o in test]), test).apgr
            for n in SIZES:
                curves["base only"].setdefault(n, []).append(base_apgr)
                if n == 0:
                    curves["base+user"].setdefault(n, []).append(base_apgr)
                    continue
                user = [replace(outcome_to_preference(o), group=USER) for o in pool[:n]]
                focused = train_router(args.router, base_prefs + user, runtime,
                                       TrainOptions(seed=rep, params=fixed, focus_groups=frozenset({USER})))
                curves["base+user"].setdefault(n, []).append(
                    metrics(focused.win_rate([o.prompt for o in test]), test).apgr)
                alone = train_router(args.router, user, runtime, TrainOptions(seed=rep))
                curves["user only"].setdefault(n, []).append(
                    metrics(alone.win_rate([o.prompt for o in test]), test).apgr)
                focus_c = getattr(focused.config, "focus_c", None)
                print(f"{domain} repeat {rep} n={n}: base+user {curves['base+user'][n][-1]:.3f} "
                      f"(correction C {focus_c}), user only {curves['user only'][n][-1]:.3f}, "
                      f"base only {base_apgr:.3f}", flush=True)
            print(f"{domain} repeat {rep}: {time.perf_counter() - start:.0f}s", flush=True)
            start = time.perf_counter()
        results[domain] = {name: {str(n): {"mean": float(np.mean(v)), "std": float(np.std(v)),
                                           "median": float(statistics.median(v)), "runs": v}
                                  for n, v in by_n.items()} for name, by_n in curves.items()}
    report = {"measured_at": datetime.now(UTC).isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "router": args.router, "repeats": args.repeats, "test_rows": args.test_rows, "results": results}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "router_learning.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| new domain | router | " + " | ".join(f"n={n}" for n in SIZES) + " |", "|" + " --- |" * (2 + len(SIZES))]
    for domain, by_router in results.items():
        for name, by_n in by_router.items():
            cells = [f"{by_n[str(n)]['mean']:.3f} ± {by_n[str(n)]['std']:.3f}" if str(n) in by_n else "-"
                     for n in SIZES]
            lines.append(f"| {domain} | {name} | " + " | ".join(cells) + " |")
    (args.out / "router_learning.md").write_text("\n".join(lines) + "\n")
    plot(results, args.out / "router_learning.png")
    print("\n".join(lines))


def plot(results: dict[str, dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5.5 * len(results), 4.2), dpi=120, squeeze=False)
    for ax, (domain, by_router) in zip(axes[0], results.items(), strict=True):
        for name, by_n in by_router.items():
            ns = sorted(int(n) for n in by_n)
            style = {"base only": ":", "user only": "--"}.get(name, "-")
            ax.errorbar(ns, [by_n[str(n)]["mean"] for n in ns], yerr=[by_n[str(n)]["std"] for n in ns], fmt=style,
                        marker="o", capsize=3, label=name)
        ax.axhline(0.5, color="grey", linewidth=0.8)
        ax.set_xscale("symlog", linthresh=100)
        ax.set_xticks(list(SIZES), [str(n) for n in SIZES])
        ax.set_xlabel("user rows with outcomes (n)")
        ax.set_ylabel("held-out APGR (mean ± sd over draws)")
        ax.set_title(f"new domain: {domain}")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


if __name__ == "__main__":
    main()
