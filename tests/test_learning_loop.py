"""The learning loop end to end: a tenant's jobs with --shadow 0.2 --judge on a domain the base router never saw
(run and judged in this process, against PostgreSQL) -> the judge's verdicts become that tenant's feedback -> a
stored retrain schedule, fired by a real beat process and run by a real worker -> that tenant's candidate is
promoted. The other tenant has judged feedback of its own: its candidate learns from that alone, never from the
first tenant's rows, and the first tenant's promotion never serves it."""

import json

import numpy as np
import pytest
from conftest import STRONG, TEST_KEY, make_settings
from jobs_helpers import items, submit_and_run, write_batch
from pydantic import SecretStr
from sqlalchemy import select
from test_distributed import cluster, fire_due_schedule  # noqa: F401  (the fixture: Redis, worker and beat processes)

from db.models import Feedback, Judgment, RouterVersion
from db.session import open_database
from jobs.services.schedules import add_schedule
from jobs.services.tenants import create_tenant
from jobs.services.versions import SERVING, resolve_router_spec
from routers.base import RouterRuntime
from routers.data import outcome_to_preference, read_routellm_evals, save_training_prompts
from routers.registry import DEFAULT_ROUTER, train_router
from routeyard.settings import Price

pytestmark = pytest.mark.slow
JUDGE = "judge-model"
SOCIAL = {f"mmlu_{s}" for s in ("econometrics high_school_geography high_school_government_and_politics "
                                "high_school_macroeconomics high_school_microeconomics high_school_psychology "
                                "human_sexuality professional_psychology public_relations security_studies sociology "
                                "us_foreign_policy").split()}
STEM = {f"mmlu_{s}" for s in ("abstract_algebra astronomy college_biology college_chemistry college_computer_science "
                              "college_mathematics college_physics computer_security conceptual_physics "
                              "electrical_engineering elementary_mathematics high_school_biology "
                              "high_school_chemistry high_school_computer_science high_school_mathematics "
                              "high_school_physics high_school_statistics machine_learning").split()}


def test_judged_shadow_pairs_train_the_tenants_router_on_a_schedule_fired_by_beat(cluster, loopback, tmp_path,  # noqa: F811
                                                                                   data_dir, embedding_cache):
    rows = read_routellm_evals(data_dir, ("gsm8k", "mmlu"))
    rng = np.random.default_rng(0)
    base = [rows[i] for i in rng.permutation(len(rows)) if rows[i].group == "gsm8k"][:600]
    # The new domain: MMLU, which the base router never saw. Its verdicts (the rule the tenant's traffic
    # follows): on social-science questions the strong answer wins, on STEM ones the weak answer is as good.
    # A router that learned from GSM8K that math needs the strong model has it backwards.
    social = [o for o in rows if o.group in SOCIAL]
    stem = [o for o in rows if o.group in STEM]
    traffic = [social[i].prompt for i in rng.permutation(len(social))[:500]] + \
              [stem[i].prompt for i in rng.permutation(len(stem))[:500]]
    traffic = [traffic[i] for i in rng.permutation(len(traffic))]
    social_prompts = {o.prompt for o in social}
    # the other tenant's own traffic: GSM8K questions neither the base router nor the first tenant saw, the strong
    # answer better on two in three (so its gate has a quality gap to measure)
    seen = {o.prompt for o in base}
    globex_prompts = [o.prompt for o in rows if o.group == "gsm8k" and o.prompt not in seen][:200]
    loopback.config.judge_models = {JUDGE}
    loopback.config.judge_verdicts = {p: STRONG if p in social_prompts else "tie" for p in traffic}
    loopback.config.judge_verdicts |= {p: "tie" if i % 3 == 2 else STRONG for i, p in enumerate(globex_prompts)}

    home = tmp_path / "home"
    runtime = RouterRuntime(device="cpu", cache_dir=home / "cache")
    (home / "cache").parent.mkdir(parents=True, exist_ok=True)
    (home / "cache").symlink_to(embedding_cache, target_is_directory=True)
    base_rows = [outcome_to_preference(o) for o in base]
    base_dir = tmp_path / "base-router"
    version = train_router(DEFAULT_ROUTER, base_rows, runtime).save(base_dir)
    save_training_prompts(base_dir, [r.prompt for r in base_rows], version)
    base_file = tmp_path / "base.jsonl"
    base_file.write_text("".join(json.dumps({"prompt": o.prompt, "strong": o.strong, "weak": o.weak}) + "\n"
                                 for o in base))

    loop_env = {"ROUTEYARD_DEFAULT_ROUTER": str(base_dir), "ROUTEYARD_JUDGE_BASE_URL": loopback.base_url,
                "ROUTEYARD_JUDGE_MODEL": JUDGE, "ROUTEYARD_JUDGE_API_KEY": TEST_KEY,
                "ROUTEYARD_PRICING": json.dumps({JUDGE: {"input": 5.0, "output": 15.0}}),
                "ROUTEYARD_JUDGE_HELDOUT_SHARE": "0.3", "ROUTEYARD_GATE_MIN_PROMPTS": "40",
                "ROUTEYARD_SCHEDULE_POLL_S": "1"}
    cluster.env = cluster.env | loop_env
    settings = make_settings(home, cluster.database_url, loopback, default_router=str(base_dir),
                             judge_base_url=loopback.base_url, judge_model=JUDGE, judge_api_key=SecretStr(TEST_KEY),
                             pricing={JUDGE: Price(input=5.0, output=15.0)}, judge_heldout_share=0.3,
                             gate_min_prompts=40)
    sf = open_database(cluster.database_url)
    acme, _ = create_tenant(sf, "acme")
    globex, _ = create_tenant(sf, "globex")

    for night in range(2):  # the tenant's traffic: every weak item has a 20% chance of a judged shadow pair
        batch = write_batch(tmp_path / f"acme-{night}.jsonl", traffic[night * 500:(night + 1) * 500])
        _, job, _ = submit_and_run(settings, batch, tenant_id=acme, strong_fraction=0.0, shadow_fraction=0.2,
                                   judge="pair", router=None)
        assert {i.router_version for i in items(sf, job.job_id)} == {f"{DEFAULT_ROUTER}@{version}"}
    globex_job = write_batch(tmp_path / "globex.jsonl", globex_prompts)
    submit_and_run(settings, globex_job, tenant_id=globex, strong_fraction=0.0, shadow_fraction=1.0, judge="pair",
                   router=None)
    with sf() as session:
        judged = list(session.scalars(select(Feedback).where(Feedback.source == "judge")))
        trainable = {t: len(list(session.scalars(select(Judgment.id).where(  # judged, not held out: trained on
            Judgment.tenant_id == t, Judgment.status == "judged", Judgment.heldout.is_(False)))))
            for t in (acme, globex)}
    acme_judged = [f for f in judged if f.tenant_id == acme]
    assert 160 <= len(acme_judged) <= 240  # 20% of 1,000 weak items
    assert len(judged) - len(acme_judged) == len(globex_prompts)  # every globex item had its pair judged

    add_schedule(sf, "retrain", {"router": DEFAULT_ROUTER, "tenant": "all", "data": [str(base_file)],
                                 "margin": 0.0}, every_s=3600)
    result = fire_due_schedule(cluster, sf, 600)
    assert result.startswith(f"{acme}: ") and f"promoted for tenant {acme}" in result, result
    assert f"{globex}: " in result and "failed" not in result, result  # its own feedback: retrained too
    with sf() as session:
        versions = {v.tenant_id: v for v in session.scalars(select(RouterVersion))}
    candidate, other = versions[acme], versions[globex]
    assert len(versions) == 2 and candidate.serving and candidate.apgr > candidate.baseline_apgr
    assert candidate.data["feedback_rows"] == trainable[acme] > 100 and candidate.data["heldout_judged"] >= 40
    # each tenant's candidate trained on its own judged rows only, gated on its own held-out pairs
    assert other.data["feedback_rows"] == trainable[globex] > 0
    assert other.data["heldout_judged"] == len(globex_prompts) - trainable[globex]
    assert resolve_router_spec(sf, SERVING, settings, acme) == candidate.path
    globex_serves = resolve_router_spec(sf, SERVING, settings, globex)  # its own candidate or the base: never acme's
    assert globex_serves == (other.path if other.serving else str(base_dir)) != candidate.path
    print(f"acme: held-out APGR {candidate.baseline_apgr:.3f} -> {candidate.apgr:.3f}; globex: {other.decision}")
