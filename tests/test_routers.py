import json
import shutil

import numpy as np
import pytest

from routers.base import RouterRuntime, TrainOptions, version_of
from routers.data import outcome_to_preference
from routers.embeddings import Embedder, resolve_encoder_path
from routers.evaluate import metrics, random_metrics
from routers.registry import PRETRAINED_DIR, ROUTERS, load_router, train_router


@pytest.fixture(scope="module")
def runtime(embedding_cache):
    return RouterRuntime(cache_dir=embedding_cache)


def test_registry_holds_the_routers_of_this_milestone():
    assert {"random", "mf"} <= set(ROUTERS)


def test_mf_trained_on_preferences_beats_random_on_held_out_prompts(gsm8k, runtime):
    train, test = gsm8k
    router = train_router("mf", [outcome_to_preference(o) for o in train], runtime, TrainOptions(seed=0))
    scores = router.win_rate([o.prompt for o in test])
    assert scores.shape == (len(test),) and ((scores >= 0) & (scores <= 1)).all()
    learned, chance = metrics(scores, test), random_metrics(test)
    assert learned.apgr > chance.apgr + 0.05, (learned.apgr, chance.apgr)


def test_mf_trained_on_shuffled_labels_does_not_beat_random(gsm8k, runtime):
    train, test = gsm8k
    labels = np.random.default_rng(3).permutation([outcome_to_preference(o).label for o in train])
    rows = [outcome_to_preference(o).__class__(o.prompt, float(y)) for o, y in zip(train, labels, strict=True)]
    router = train_router("mf", rows, runtime, TrainOptions(seed=0))
    assert metrics(router.win_rate([o.prompt for o in test]), test).apgr < 0.56


def test_a_saved_router_reloads_with_identical_scores_and_a_content_version(gsm8k, runtime, tmp_path):
    train, test = gsm8k
    router = train_router("mf", [outcome_to_preference(o) for o in train[:200]], runtime, TrainOptions(epochs=2))
    version = router.save(tmp_path / "mf")
    assert (tmp_path / "mf" / "model.safetensors").exists()
    config = json.loads((tmp_path / "mf" / "config.json").read_text())
    assert config["router"] == "mf" and config["train"]["rows"] == 200 and len(config["train"]["data_hash"]) == 16
    loaded = load_router(str(tmp_path / "mf"), runtime)
    prompts = [o.prompt for o in test[:50]]
    assert loaded.name == "mf" and loaded.version == version == version_of(tmp_path / "mf")
    np.testing.assert_allclose(loaded.router.win_rate(prompts), router.win_rate(prompts), rtol=1e-6)


def test_the_shipped_checkpoint_loads_by_name(runtime):
    loaded = load_router("mf", runtime)
    assert loaded.version == version_of(PRETRAINED_DIR / "mf")
    scores = loaded.router.win_rate(["hello there", "Prove that there are infinitely many primes."])
    assert scores.shape == (2,) and scores.std() > 0


def test_a_hub_id_loads_from_the_hugging_face_cache_offline(tmp_path, monkeypatch, runtime):
    # The same code that downloads for users with the internet, fed from a populated cache.
    snapshot = tmp_path / "hub" / "models--acme--router-mf" / "snapshots" / ("0" * 40)
    shutil.copytree(PRETRAINED_DIR / "mf", snapshot)
    (tmp_path / "hub" / "models--acme--router-mf" / "refs").mkdir()
    (tmp_path / "hub" / "models--acme--router-mf" / "refs" / "main").write_text("0" * 40)
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    import huggingface_hub.constants as hc

    monkeypatch.setattr(hc, "HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setattr(hc, "HF_HUB_OFFLINE", True)
    loaded = load_router("acme/router-mf", runtime)
    assert loaded.name == "mf" and loaded.version == version_of(PRETRAINED_DIR / "mf")


def test_random_router_is_uniform_and_the_same_on_every_run():
    a = load_router("random").router.win_rate([f"prompt {i}" for i in range(4000)])
    b = load_router("random").router.win_rate([f"prompt {i}" for i in range(4000)])
    assert (a == b).all() and abs(a.mean() - 0.5) < 0.02 and abs((a > 0.7).mean() - 0.3) < 0.03


def test_unknown_router_and_bad_config_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown router 'nope'"):
        load_router("nope")
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "config.json").write_text('{"router": "svm"}')
    with pytest.raises(ValueError, match="field 'router'"):
        load_router(str(tmp_path / "bad"))


def test_encoder_from_a_local_path_and_embeddings_come_from_the_cache(tmp_path):
    local = resolve_encoder_path("sentence-transformers/all-MiniLM-L6-v2")
    assert resolve_encoder_path(local) == local
    embedder = Embedder(local, cache_dir=tmp_path)
    first = embedder.embed(["one prompt", "another prompt", "one prompt"])
    assert first.shape == (3, 384) and np.allclose(np.linalg.norm(first, axis=1), 1, atol=1e-5)
    np.testing.assert_array_equal(first[0], first[2])
    again = Embedder(local, cache_dir=tmp_path)
    again._model = "not loaded"  # a cache hit must not touch the model
    np.testing.assert_array_equal(again.embed(["another prompt"])[0], first[1])
