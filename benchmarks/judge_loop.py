"""The learning loop, driven night by night through the real system (issue 16): a tenant's traffic from a
domain its router never saw, submitted as jobs with a shadow share and `--judge`; the loopback judge answers
with verdicts derived from the recorded outcomes (strong right and weak wrong: the strong answer wins; the
reverse: the weak one; else a tie), as the router-quality benchmark scores routers; each night the tenant's
router is retrained (`retrain --tenant`, the promotion gate on its held-out judged pairs). After each night, the
router then serving the tenant is scored on a fixed test set of the new domain (true outcomes, never traffic):
held-out APGR against nights of feedback.

    python benchmarks/judge_loop.py [--nights 4] [--per-night 400] [--shadow 0.5] [--domain mmlu-stem]
                                    [--base-rows 2500]

Writes benchmarks/results/judge_loop.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from pydantic import SecretStr  # noqa: E402
from sqlalchemy import func, select  # noqa: E402

from benchmarks.protocols import domain_of  # noqa: E402
from db.models import Feedback  # noqa: E402
from db.session import open_database  # noqa: E402
from jobs.services.retrain import retrain  # noqa: E402
from jobs.services.submit import JobOptions, submit_job  # noqa: E402
from jobs.services.tenants import create_tenant  # noqa: E402
from jobs.services.versions import SERVING, resolve_router_spec  # noqa: E402
from routers.base import RouterRuntime  # noqa: E402
from routers.data import Outcome, outcome_to_preference, read_routellm_evals, save_training_prompts  # noqa: E402
from routers.evaluate import metrics  # noqa: E402
from routers.registry import DEFAULT_ROUTER, load_router, train_router  # noqa: E402
from routeyard.errors import InvalidInput  # noqa: E402
from routeyard.settings import Price, Settings  # noqa: E402
from routeyard.testing.loopback import LoopbackConfig, LoopbackServer, ModelProfile  # noqa: E402
from worker.embedded import run_embedded  # noqa: E402

DATA = Path(os.environ.get("ROUTEYARD_DATA", ROOT.parent / "shared" / "data")) / "routellm-evals"
STRONG, WEAK, JUDGE = "gpt-4-1106-preview", "mixtral-8x7b-instruct", "judge-model"


def verdict(o: Outcome) -> str:
    return STRONG if o.strong > o.weak else WEAK if o.strong < o.weak else "tie"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nights", type=int, default=4)
    parser.add_argument("--per-night", type=int, default=400, help="prompts of the tenant's traffic a night")
    parser.add_argument("--shadow", type=float, default=0.5, help="share of weak items judged (--shadow)")
    parser.add_argument("--strong-fraction", type=float, default=0.3)
    parser.add_argument("--domain", default="mmlu-stem", help="the new domain: an MMLU domain (mmlu-stem, ...)")
    parser.add_argument("--test-rows", type=int, default=300)
    parser.add_argument("--heldout-share", type=float, default=0.3, help="ROUTEYARD_JUDGE_HELDOUT_SHARE")
    parser.add_argument("--gate-min", type=int, default=50, help="ROUTEYARD_GATE_MIN_PROMPTS")
    parser.add_argument("--base-rows", type=int, default=2500, help="base rows (outside the domain) sampled")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cache", type=Path, default=ROOT / "benchmarks" / "cache")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args()

    rows = read_routellm_evals(DATA)
    held = args.domain.removeprefix("mmlu-")
    base = [r for r in rows if domain_of(r.group) != held]
    base = [base[i] for i in np.random.default_rng(args.seed).permutation(len(base))[: args.base_rows]]
    new = [r for r in rows if domain_of(r.group) == held]
    order = np.random.default_rng(args.seed).permutation(len(new))
    test = [new[i] for i in order[: args.test_rows]]
    traffic = [new[i] for i in order[args.test_rows:]]
    need = args.nights * args.per_night
    if need > len(traffic):
        raise SystemExit(f"{need} prompts of traffic asked for, the domain has {len(traffic)} besides the test set")

    work = Path(tempfile.mkdtemp(prefix="routeyard-judge-loop-"))
    home = work / "home"
    home.mkdir()
    (home / "cache").symlink_to(args.cache.resolve(), target_is_directory=True)
    runtime = RouterRuntime(device="cpu", cache_dir=home / "cache")
    started = time.perf_counter()
    base_prefs = [outcome_to_preference(o) for o in base]
    base_dir = work / "base-router"
    version = train_router(DEFAULT_ROUTER, base_prefs, runtime).save(base_dir)
    save_training_prompts(base_dir, [r.prompt for r in base_prefs], version)
    base_file = work / "base.jsonl"
    base_file.write_text("".join(json.dumps({"prompt": o.prompt, "strong": o.strong, "weak": o.weak}) + "\n"
                                 for o in base))
    print(f"base router on {len(base)} rows outside {args.domain}: {time.perf_counter() - started:.0f}s", flush=True)

    fast = ModelProfile(first_token_ms=5, ms_per_token=0.0, answer_words=30)
    config = LoopbackConfig(models={STRONG: fast, WEAK: fast, JUDGE: fast}, judge_models={JUDGE},
                            judge_verdicts={o.prompt: verdict(o) for o in traffic}, jitter=False)
    with LoopbackServer(config) as server:
        settings = Settings(home=home, database_url=f"sqlite:///{work / 'routeyard.db'}",
                            strong_base_url=server.base_url, weak_base_url=server.base_url,
                            judge_base_url=server.base_url, strong_model=STRONG,
                            weak_model=WEAK, judge_model=JUDGE, judge_api_key=SecretStr("x"),
                            default_router=str(base_dir), concurrency=32, judge_heldout_share=args.heldout_share,
                            gate_min_prompts=args.gate_min, pricing={JUDGE: Price(input=2.5, output=10.0)},
                            _env_file=None)  # type: ignore[call-arg]
        sf = open_database(settings.resolved_database_url)
        tenant, _ = create_tenant(sf, "acme")

        def serving_apgr() -> tuple[str, float]:
            spec = resolve_router_spec(sf, SERVING, settings, tenant)
            loaded = load_router(spec, runtime)
            return loaded.label, metrics(loaded.router.win_rate([o.prompt for o in test]), test).apgr

        label, apgr = serving_apgr()
        nights = [{"night": 0, "judged_feedback": 0, "serving": label, "test_apgr": apgr, "decision": "base router"}]
        print(f"night 0: {label} test APGR {apgr:.3f}", flush=True)
        for night in range(1, args.nights + 1):
            prompts = traffic[(night - 1) * args.per_night: night * args.per_night]
            batch = work / f"night-{night}.jsonl"
            batch.write_text("".join(json.dumps({"id": str(i), "prompt": o.prompt, "max_tokens": 64}) + "\n"
                                     for i, o in enumerate(prompts)))
            with batch.open("rb") as f:
                job = submit_job(sf, settings, f, "jsonl", JobOptions(
                    tenant_id=tenant, strong_fraction=args.strong_fraction, shadow_fraction=args.shadow, judge="pair"))
            run_embedded(sf, settings, job.job_id)  # routes, calls, then judges its shadow pairs
            with sf() as session:
                judged = session.scalar(select(func.count()).select_from(Feedback)
                                        .where(Feedback.tenant_id == tenant, Feedback.source == "judge")) or 0
            t0 = time.perf_counter()
            try:
                result = retrain(sf, settings, DEFAULT_ROUTER, [base_file], [], 0.0, tenant_id=tenant)
                decision = result.decision
            except InvalidInput as exc:  # too few held-out judged pairs yet, say
                decision = f"refused: {exc}"
            label, apgr = serving_apgr()
            nights.append({"night": night, "judged_feedback": judged, "serving": label, "test_apgr": apgr,
                           "retrain_s": round(time.perf_counter() - t0, 1), "decision": decision})
            print(f"night {night}: {judged} judged pairs; serving {label}, test APGR {apgr:.3f}; "
                  f"{decision[:160]}", flush=True)

    report = {"measured_at": datetime.now(UTC).isoformat(), "machine": f"{platform.machine()}, {os.cpu_count()} cores",
              "domain": args.domain, "base_rows": len(base), "test_rows": len(test), "per_night": args.per_night,
              "shadow": args.shadow, "strong_fraction": args.strong_fraction, "heldout_share": args.heldout_share,
              "gate_min_prompts": args.gate_min,
              "base_rows_sampled": args.base_rows, "seed": args.seed, "router": DEFAULT_ROUTER, "nights": nights,
              "wall_s": round(time.perf_counter() - started)}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "judge_loop.json").write_text(json.dumps(report, indent=2) + "\n")
    lines = ["| night | judged pairs (all nights) | serving | test APGR | decision |",
             "| --- | --- | --- | --- | --- |"]
    for n in nights:
        short = str(n["decision"]).split(";")[0].replace("|", "/")
        lines.append(f"| {n['night']} | {n['judged_feedback']} | {n['serving']} | {n['test_apgr']:.3f} | {short} |")
    (args.out / "judge_loop.md").write_text("\n".join(lines) + "\n")
    plot(nights, args, args.out / "judge_loop.png")
    print("\n".join(lines))


def plot(nights: list[dict], args: argparse.Namespace, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=120)
    x = [n["night"] for n in nights]
    ax.plot(x, [n["test_apgr"] for n in nights], marker="o", label="router serving the tenant")
    ax.axhline(nights[0]["test_apgr"], color="grey", linestyle="--", label="base router (never saw the domain)")
    for n in nights[1:]:
        ax.annotate(str(n["judged_feedback"]), (n["night"], n["test_apgr"]), textcoords="offset points",
                    xytext=(0, 7), ha="center", fontsize=7)
    ax.set_xlabel("nights of judged feedback (labels: judged pairs so far)")
    ax.set_ylabel(f"APGR on {args.test_rows} held-out {args.domain} prompts")
    ax.set_title(f"the learning loop on {args.domain}: --shadow {args.shadow} --judge, nightly retrain")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out)
    plt.close(fig)


if __name__ == "__main__":
    main()
