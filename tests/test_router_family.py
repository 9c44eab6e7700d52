"""The rest of the paper's routers: sw_ranking, bert, causal_llm; arena battles; the eval command."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import routers.llm_features
from routers.base import RouterRuntime, TrainOptions
from routers.causal_llm import CausalLLMConfig, CausalLLMRouter, candidate_layers, choose_layer
from routers.data import Preference, outcome_to_preference, read_arena_battles, read_routellm_evals
from routers.evaluate import metrics, random_metrics
from routers.finetune import logits
from routers.linear_head import outcome_score
from routers.llm_features import SMOLLM2, resolve_base
from routers.registry import ROUTERS, load_router, train_router
from routeyard.errors import InvalidInput

ROOT = Path(__file__).resolve().parent.parent


def auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """P(score of a strong-win prompt > score of a weak-or-tie prompt)."""
    pos, neg = scores[labels == 1.0], scores[labels < 1.0]
    return float((pos[:, None] > neg[None, :]).mean())


@pytest.fixture(scope="module")
def concept(gsm8k, data_dir):
    """(96 rows to train on, 120 held out): real prompts, labelled by a rule a router can learn from a hundred
    rows. GSM8K word problems need the strong model (it is right, the weak one wrong), MMLU questions do not
    (both right). Balanced, one group. The real outcomes of a hundred GSM8K rows carry too little signal for
    bert or causal_llm to rank unseen prompts (held-out AUC ~0.5, as for shuffled labels), so on those a
    "learns" test could only measure memorising its own training rows."""
    train, test = gsm8k
    mmlu = read_routellm_evals(data_dir, ("mmlu",))
    pick = np.random.default_rng(0).permutation(len(mmlu))

    def hard(prompts: list[str]) -> list[Preference]:
        return [Preference(p, 1.0, "", 1.0, 0.0) for p in prompts]

    def easy(prompts: list[str]) -> list[Preference]:
        return [Preference(p, 0.5, "", 1.0, 1.0) for p in prompts]

    return (hard([o.prompt for o in train[:48]]) + easy([mmlu[i].prompt for i in pick[:48]]),
            hard([o.prompt for o in test[:60]]) + easy([mmlu[i].prompt for i in pick[48:108]]))


@pytest.fixture(scope="module")
def small(concept):
    return concept[0]


def heldout_auc(router, concept) -> float:
    """AUC of the router's scores on the rows it did not train on; a router that learned nothing gets ~0.5."""
    held = concept[1]
    return auc(router.win_rate([p.prompt for p in held]), np.array([p.label for p in held]))


@pytest.fixture(scope="module", autouse=True)
def smollm2_loaded_once():
    """The causal_llm tests build SmolLM2 from its GGUF seven times; each load dequantises the weights and converts
    the tokenizer (~30 s on two CPU cores). Each is loaded for real once here, later builds get fresh copies of
    it: what the router then does to the model (truncating, freezing, putting in trained weights) is as ever."""
    features = routers.llm_features
    loaded: dict[tuple, object] = {}

    def once(loader):
        def load(*args, **kwargs):
            key = (loader, args, tuple(sorted((k, str(v)) for k, v in kwargs.items())))
            if key not in loaded:
                loaded[key] = loader.from_pretrained(*args, **kwargs)
            return copy.deepcopy(loaded[key])
        return type("Once", (), {"from_pretrained": staticmethod(load)})

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(features, "AutoTokenizer", once(features.AutoTokenizer))
        patch.setattr(features, "AutoModelForSequenceClassification",
                      once(features.AutoModelForSequenceClassification))
        yield


@pytest.fixture(scope="module")
def runtime(embedding_cache):
    return RouterRuntime(cache_dir=embedding_cache, batch_size=32)


def test_the_registry_holds_all_five_routers_of_the_paper_and_the_default():
    assert set(ROUTERS) == {"random", "sw_ranking", "mf", "bert", "causal_llm", "linear"}


@pytest.mark.slow
def test_sw_ranking_beats_random_on_held_out_prompts_and_round_trips(gsm8k, runtime, tmp_path):
    train, test = gsm8k
    router = train_router("sw_ranking", [outcome_to_preference(o) for o in train], runtime)
    scores = router.win_rate([o.prompt for o in test])
    assert metrics(scores, test).apgr > random_metrics(test).apgr + 0.03
    router.save(tmp_path / "sw")
    again = load_router(str(tmp_path / "sw"), runtime).router.win_rate([o.prompt for o in test[:20]])
    np.testing.assert_allclose(again, scores[:20], atol=2e-3)  # float16 training embeddings on disk


def test_sw_ranking_weights_similar_prompts_more(runtime):
    rows = [Preference("Solve the integral of x squared from 0 to 3.", 1.0),
            Preference("Compute the derivative of sin(x) times x.", 1.0),
            Preference("Say hi to my grandmother.", 0.0), Preference("Wish my friend a happy birthday.", 0.0)]
    router = train_router("sw_ranking", rows, runtime, TrainOptions(params={"gamma": 1000.0}))
    math, greeting = router.win_rate(["Integrate x cubed from 1 to 2.", "Say hello to my aunt."])
    assert math > 0.5 > greeting


@pytest.mark.slow
def test_bert_learns_from_preferences_and_saves_and_reloads(small, concept, runtime, tmp_path):
    router = train_router("bert", small, runtime,
                          TrainOptions(epochs=2, params={"max_length": 128, "lr": 1e-4, "batch_size": 16}))
    assert heldout_auc(router, concept) > 0.9
    held = [p.prompt for p in concept[1][:4] + concept[1][-4:]]
    router.save(tmp_path / "bert")
    loaded = load_router(str(tmp_path / "bert"), runtime)
    assert loaded.name == "bert"
    np.testing.assert_allclose(loaded.router.win_rate(held), router.win_rate(held), rtol=1e-4)


@pytest.mark.slow
def test_bert_starts_fine_tuning_from_a_linear_probe_on_the_same_sentence_embeddings(small, runtime):
    from dataclasses import replace

    from routers.base import embedder_for
    from routers.linear_head import fit_logistic

    router = train_router("bert", small, runtime, TrainOptions(epochs=0, params={"probe_l2": 1e-3}))
    assert router.trained["finetune_rows"] == len(small) and router.trained["final_loss"] is None
    # With no fine-tuning the model is exactly the probe: its pooled states are the cached sentence embeddings.
    emb = embedder_for(router.config.base, replace(runtime, encoder_backend="torch")).embed([p.prompt for p in small])
    w, b = fit_logistic(emb.astype(np.float64), np.array([p.label for p in small]), 1e-3)
    np.testing.assert_allclose(router.win_rate([p.prompt for p in small]), 1 / (1 + np.exp(-(emb @ w + b[0]))),
                               atol=2e-3)


def test_smollm2_resolves_to_the_offline_gguf_and_a_local_path():
    folder, gguf = resolve_base(SMOLLM2)
    assert gguf and gguf.endswith(".gguf") and (Path(folder) / gguf).is_file()
    assert resolve_base(str(Path(folder) / gguf)) == (folder, gguf)


@pytest.mark.slow
def test_causal_llm_head_learns_and_saves_only_what_it_trained(small, concept, runtime, tmp_path):
    router = train_router("causal_llm", small, runtime, TrainOptions(params={"max_length": 128,
                                                                          "target": "preference"}))
    assert router.config.target == "preference" and len(router.priors) == 1
    assert heldout_auc(router, concept) > 0.9
    # The depth was chosen among the candidates by validation, and the model now stops there.
    layer = router.config.layer
    assert layer in candidate_layers(30) and set(router.trained["layer_validation_apgr"]) == {
        str(n) for n in candidate_layers(30)}
    assert len(router.model.model.layers) == layer
    # Scoring from cached features is the truncated model's own forward pass (head on the last token).
    prompts = [p.prompt for p in small[:4] + small[-4:]]
    scores = router.win_rate(prompts)
    full = logits(router.model, router.tokenizer, prompts, 4, 128, "cpu") + router.priors[0].offsets(prompts)
    np.testing.assert_allclose(scores, 1 / (1 + np.exp(-full)), rtol=1e-3)
    router.save(tmp_path / "llm")
    assert (tmp_path / "llm" / "model.safetensors").stat().st_size < 100_000  # the head, not the base
    assert isinstance(json.loads((tmp_path / "llm" / "config.json").read_text())["group_prior"], dict)
    loaded = load_router(str(tmp_path / "llm"), runtime)
    assert len(loaded.router.model.model.layers) == layer and loaded.router.priors == router.priors
    np.testing.assert_allclose(loaded.router.win_rate(prompts), scores, rtol=1e-4)


@pytest.mark.slow
def test_causal_llm_fits_two_quality_heads_on_outcome_rows_and_one_on_preferences(small, concept, runtime,
                                                                                    tmp_path):
    prompts = [p.prompt for p in small[:4] + small[-4:]]
    router = train_router("causal_llm", small, runtime, TrainOptions(params={"max_length": 128}))
    assert router.config.target == "outcomes" and router.model.score.out_features == 2 and len(router.priors) == 2
    assert heldout_auc(router, concept) > 0.9
    scores = router.win_rate(prompts)
    assert scores.min() >= 0 and scores.max() <= 1
    # The score is 0.5 (1 + P(strong right) - P(weak right)) from the model's own two logits.
    enc = router.tokenizer(prompts, padding=True, truncation=True, max_length=128, return_tensors="pt")
    z = router.model(**enc).logits.detach().double().numpy()
    strong, weak = (prior.offsets(prompts) for prior in router.priors)
    np.testing.assert_allclose(scores, outcome_score(z[:, 0] + strong, z[:, 1] + weak), rtol=1e-3)
    # Saved in the layout of every version: the two heads' priors as a list [strong, weak].
    router.save(tmp_path / "llm")
    saved = json.loads((tmp_path / "llm" / "config.json").read_text())
    assert saved["target"] == "outcomes" and [p["intercept"] for p in saved["group_prior"]] == [
        p.intercept for p in router.priors]
    loaded = load_router(str(tmp_path / "llm"), runtime).router
    assert loaded.priors == router.priors
    np.testing.assert_allclose(loaded.win_rate(prompts), scores, rtol=1e-4)
    # Rows without both qualities (battles, feedback): the preference head; asking for outcomes is an error.
    bare = [Preference(p.prompt, p.label, p.group) for p in small]
    options = TrainOptions(params={"max_length": 128, "layer": 20})
    assert train_router("causal_llm", bare, runtime, options).config.target == "preference"
    with pytest.raises(InvalidInput, match="target 'outcomes' needs"):
        train_router("causal_llm", bare, runtime, TrainOptions(params={"layer": 20, "target": "outcomes"}))
    with pytest.raises(InvalidInput, match=r"setting 'target' of router 'causal_llm': 'both' is not 'auto' or "):
        train_router("causal_llm", bare, runtime, TrainOptions(params={"target": "both"}))


@pytest.mark.slow
def test_causal_llm_picks_the_layer_whose_features_carry_the_signal():
    """Layer choice by grouped validation: signal in one layer's features, noise in the other's."""
    import torch

    rng = np.random.default_rng(0)
    n = 600
    signal = rng.normal(size=(n, 8))
    latent = signal[:, 0] + 0.5 * rng.normal(size=n)
    y = np.where(latent > 0.8, 1.0, np.where(latent < -1.5, 0.0, 0.5))  # strong wins, ties, weak wins
    data = [Preference(f"prompt {i}", float(y[i]), f"g{i % 6}") for i in range(n)]
    by_layer = {10: torch.from_numpy(rng.normal(size=(n, 8))), 20: torch.from_numpy(signal)}
    layer, l2, scores = choose_layer(by_layer, data, CausalLLMConfig())
    assert layer == 20 and l2 is not None and scores["20"] > scores["10"] + 0.2
    # and the other way round, so the choice is not just "the deepest"
    layer, _, _ = choose_layer({10: by_layer[20], 20: by_layer[10]}, data, CausalLLMConfig())
    assert layer == 10


@pytest.mark.slow
def test_causal_llm_layer_setting_truncates_the_base():
    model, _ = CausalLLMRouter.build(CausalLLMConfig(layer=5, train_layers=2), "cpu")
    assert len(model.model.layers) == 5 and model.config.num_hidden_layers == 5
    trained = {n.split(".")[2] for n, p in model.named_parameters() if p.requires_grad and ".layers." in n}
    assert trained == {"3", "4"}
    with pytest.raises(InvalidInput, match=r"layer must be in 1\.\.30"):
        CausalLLMRouter.build(CausalLLMConfig(layer=31), "cpu")


def test_arena_battles_become_labels_from_the_strong_side(tmp_path):
    path = tmp_path / "arena.jsonl"
    rows = [("gpt-4-1106-preview", "mixtral-8x7b-instruct-v0.1", "model_a"),
            ("mixtral-8x7b-instruct-v0.1", "gpt-4-0613", "model_a"),
            ("gpt-4-0613", "llama-2-70b-chat", "tie"),
            ("gpt-4-0613", "gpt-4-1106-preview", "model_b"),  # strong vs strong: not a routing signal
            ("unknown-model", "gpt-4-0613", "model_a")]
    path.write_text("".join(json.dumps({"prompt": f"p{i}", "model_a": a, "model_b": b, "winner": w}) + "\n"
                            for i, (a, b, w) in enumerate(rows)))
    prefs = read_arena_battles(path)
    assert [(p.prompt, p.label) for p in prefs] == [("p0", 1.0), ("p1", 0.0), ("p2", 0.5)]


@pytest.mark.slow
def test_router_eval_writes_metrics_and_a_plot(gsm8k, tmp_path, embedding_cache):
    _, test = gsm8k
    outcomes = tmp_path / "outcomes.jsonl"
    outcomes.write_text("".join(json.dumps({"prompt": o.prompt, "strong": o.strong, "weak": o.weak}) + "\n"
                                for o in test[:200]))
    home = tmp_path / "home"
    home.mkdir()
    (home / "cache").symlink_to(embedding_cache, target_is_directory=True)
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "router", "eval", "--router", "mf", "--router",
                           "random", "--outcomes", str(outcomes), "--out", str(tmp_path / "eval")],
                          env={"PATH": "/usr/bin:/bin", "ROUTEYARD_HOME": str(home), "PYTHONPATH": str(ROOT)},
                          capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 0, proc.stderr
    found = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"random baseline", "oracle"} <= set(found)  # the baselines, beside the routers asked for
    assert any(k.startswith("mf@") for k in found) and any(k.startswith("random@") for k in found)
    assert found["oracle"]["apgr"] > found["random baseline"]["apgr"]
    assert set(found["random baseline"]["pgr_at"]) == {f"0.{i}" for i in range(1, 10)}
    assert (tmp_path / "eval" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
