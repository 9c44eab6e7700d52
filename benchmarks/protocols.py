"""Held-out protocols for router quality: train on some of the shared outcome rows, test on others.

The headline protocols hold out data that is *unlike* the training data, because routers are judged on
benchmarks and subjects they never saw:
  mmlu->gsm8k    train on all of MMLU, test on GSM8K (another benchmark entirely)
  gsm8k->mmlu    train on GSM8K, test on all of MMLU
  mmlu-domains   4 folds, one per MMLU domain (STEM, humanities, social sciences, other; Hendrycks et al.'s
                 own categories): train on the other three domains plus GSM8K, test on the held-out domain,
                 so no test subject has a near twin (e.g. high-school and college physics) in training
Their mean is the number design choices are made on. Two in-distribution protocols are kept for reference:
  mmlu-subjects  grouped 4-fold over randomly drawn MMLU subjects (twins end up on both sides)
  gsm8k-5fold    5-fold over GSM8K prompts
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from routers.data import Outcome

UNLIKE = ("mmlu->gsm8k", "gsm8k->mmlu", "mmlu-domains")
IN_DISTRIBUTION = ("mmlu-subjects", "gsm8k-5fold")

# MMLU subject -> domain, as in the MMLU release's categories.py (anatomy is "health", so "other"). Subjects
# absent from the shared data are kept: the table is the whole standard mapping.
_DOMAIN_SUBJECTS = {
    "stem": "abstract_algebra astronomy college_biology college_chemistry college_computer_science "
            "college_mathematics college_physics computer_security conceptual_physics electrical_engineering "
            "elementary_mathematics high_school_biology high_school_chemistry high_school_computer_science "
            "high_school_mathematics high_school_physics high_school_statistics machine_learning",
    "humanities": "formal_logic high_school_european_history high_school_us_history high_school_world_history "
                  "international_law jurisprudence logical_fallacies moral_disputes moral_scenarios philosophy "
                  "prehistory professional_law world_religions",
    "social": "econometrics high_school_geography high_school_government_and_politics high_school_macroeconomics "
              "high_school_microeconomics high_school_psychology human_sexuality professional_psychology "
              "public_relations security_studies sociology us_foreign_policy",
    "other": "anatomy business_ethics clinical_knowledge college_medicine global_facts human_aging management "
             "marketing medical_genetics miscellaneous nutrition professional_accounting professional_medicine "
             "virology",
}
MMLU_DOMAIN = {f"mmlu_{s}": domain for domain, subjects in _DOMAIN_SUBJECTS.items() for s in subjects.split()}

Fold = tuple[list[Outcome], list[Outcome]]


def domain_of(group: str) -> str:
    """`gsm8k`, an MMLU domain, or the group itself for anything else."""
    if group.startswith("mmlu_"):
        if group not in MMLU_DOMAIN:
            raise ValueError(f"MMLU subject {group!r} has no domain in benchmarks/protocols.py")
        return MMLU_DOMAIN[group]
    return group


def protocols(rows: Sequence[Outcome], names: Sequence[str] = UNLIKE) -> dict[str, list[Fold]]:
    """Train/test folds of each protocol named (see the module docstring)."""
    mmlu = [r for r in rows if r.group.startswith("mmlu")]
    gsm = [r for r in rows if r.group == "gsm8k"]
    out: dict[str, list[Fold]] = {}
    for name in names:
        if name == "mmlu->gsm8k":
            out[name] = [(mmlu, gsm)]
        elif name == "gsm8k->mmlu":
            out[name] = [(gsm, mmlu)]
        elif name == "mmlu-domains":
            out[name] = [([r for r in rows if domain_of(r.group) != d], [r for r in mmlu if domain_of(r.group) == d])
                         for d in ("stem", "humanities", "social", "other")]
        elif name == "mmlu-subjects":
            subjects = sorted({r.group for r in mmlu})
            order = np.random.default_rng(0).permutation(len(subjects))
            folds = [{subjects[i] for i in order[k::4]} for k in range(4)]
            out[name] = [([r for r in mmlu if r.group not in f], [r for r in mmlu if r.group in f]) for f in folds]
        elif name == "gsm8k-5fold":
            order = np.random.default_rng(0).permutation(len(gsm))
            folds = [set(order[k::5].tolist()) for k in range(5)]
            out[name] = [([r for i, r in enumerate(gsm) if i not in f], [r for i, r in enumerate(gsm) if i in f])
                         for f in folds]
        else:
            raise ValueError(f"unknown protocol {name!r}; choose from {[*UNLIKE, *IN_DISTRIBUTION]}")
    return out
