"""The default encoder on ONNX Runtime (int8): the same decisions as PyTorch, its export cached by the weights'
fingerprint, its own embedding-cache keys, and the backend setting."""

import hashlib
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import spearmanr

from routers import embeddings
from routers.base import RouterRuntime
from routers.data import read_routellm_evals
from routers.embeddings import DEFAULT_ENCODER, Embedder, resolve_backend, resolve_encoder_path
from routers.onnx_encoder import exported_model, fingerprint
from routers.registry import DEFAULT_ROUTER, load_router
from routeyard.errors import InvalidInput
from routeyard.settings import Settings
from worker.runtime import router_runtime

MINILM = resolve_encoder_path(DEFAULT_ENCODER)
MINILM_DIR = Path(MINILM)


def test_auto_is_onnx_on_a_cpu_and_torch_on_a_gpu_and_other_encoders_stay_on_torch(tmp_path):
    assert resolve_backend("auto", DEFAULT_ENCODER, "cpu") == "onnx"
    assert resolve_backend("auto", MINILM, "cpu") == "onnx"  # the same weights by their path
    assert resolve_backend("auto", DEFAULT_ENCODER, "cuda") == "torch"
    assert resolve_backend("torch", DEFAULT_ENCODER, "cpu") == "torch"
    assert resolve_backend("onnx", DEFAULT_ENCODER, "cuda") == "onnx"  # asked for: given
    other = tmp_path / "other-encoder"
    other.mkdir()
    assert resolve_backend("onnx", str(other), "cpu") == "torch"  # only MiniLM's export is checked for parity
    with pytest.raises(InvalidInput, match="encoder backend 'tf'"):
        resolve_backend("tf", DEFAULT_ENCODER, "cpu")


def test_the_setting_reaches_the_routers_embedder(monkeypatch, tmp_path):
    monkeypatch.setenv("ROUTEYARD_ENCODER_BACKEND", "torch")
    settings = Settings(home=tmp_path, _env_file=None)
    assert router_runtime(settings).encoder_backend == "torch"
    router = load_router(DEFAULT_ROUTER, router_runtime(settings)).router
    assert router.embedder.backend == "torch"
    monkeypatch.setenv("ROUTEYARD_ENCODER_BACKEND", "gpu-please")
    with pytest.raises(ValueError, match="encoder_backend"):
        Settings(home=tmp_path, _env_file=None)


@pytest.mark.slow  # the first ONNX use in a session exports the model (seconds to a minute)
def test_torch_keys_are_unchanged_and_onnx_vectors_have_their_own(embedding_cache, monkeypatch):
    text = "What is the capital of France?"
    torch_layers = Embedder(layers=True, device="cpu", backend="torch")
    # The key every earlier version wrote: caches filled before the ONNX backend existed keep their hits.
    assert torch_layers._key(text) == hashlib.sha256(f"{DEFAULT_ENCODER}#layers\x00{text}".encode()).digest()
    onnx_layers = Embedder(layers=True, device="cpu", backend="onnx", cache_dir=embedding_cache,
                           export_dir=embedding_cache)
    assert onnx_layers._key(text) not in (torch_layers._key(text), Embedder(device="cpu", backend="onnx")._key(text))
    # Vectors from another export recipe are never reused: a cache filled before a recipe change misses.
    monkeypatch.setattr(embeddings, "ONNX_RECIPE", "layers-mean-v2-other")
    assert onnx_layers._key(text) == hashlib.sha256(f"{DEFAULT_ENCODER}#onnx-layers-mean-v2-other#layers\x00{text}"
                                                    .encode()).digest()
    monkeypatch.undo()
    first = onnx_layers.embed([text, "Solve 3x + 5 = 20.", text])
    assert first.shape == (3, 7 * 384) and onnx_layers.dim == 7 * 384
    np.testing.assert_array_equal(first[0], first[2])
    again = Embedder(layers=True, device="cpu", backend="onnx", cache_dir=embedding_cache, export_dir=embedding_cache)
    again._onnx = "not loaded"  # a cache hit must not touch the session
    np.testing.assert_array_equal(again.embed(["Solve 3x + 5 = 20."])[0], first[1])


@pytest.mark.slow  # the first ONNX use in a session exports the model (seconds to a minute)
def test_the_sentence_embedding_is_the_top_layer_unit_normalised(embedding_cache):
    texts = ["What is the capital of France?", "Solve 3x + 5 = 20 for x, step by step.", ""]
    layers = Embedder(layers=True, device="cpu", backend="onnx", export_dir=embedding_cache).embed(texts)
    sentence = Embedder(device="cpu", backend="onnx", export_dir=embedding_cache).embed(texts)
    top = layers[:, -384:] / np.linalg.norm(layers[:, -384:], axis=1, keepdims=True)
    np.testing.assert_allclose(top, sentence, atol=1e-5)
    reference = Embedder(device="cpu", backend="torch").embed(texts)
    assert (np.sum(sentence * reference, axis=1) > 0.95).all()  # int8, yet the same direction


@pytest.mark.slow  # the first ONNX use in a session exports the model (seconds to a minute)
def test_the_export_is_cached_and_named_by_the_weights(embedding_cache, tmp_path):
    path = exported_model(MINILM_DIR, embedding_cache)
    made = path.stat().st_mtime_ns
    assert exported_model(MINILM_DIR, embedding_cache) == path and path.stat().st_mtime_ns == made  # not redone
    assert fingerprint(MINILM_DIR) in path.name
    changed = tmp_path / "minilm"
    changed.mkdir()
    os.symlink(MINILM_DIR / "model.safetensors", changed / "model.safetensors")
    shutil.copy(MINILM_DIR / "config.json", changed / "config.json")
    assert fingerprint(changed) == fingerprint(MINILM_DIR)
    with (changed / "config.json").open("a") as fh:
        fh.write("\n")
    assert fingerprint(changed) != fingerprint(MINILM_DIR)  # other weights or config: another export


@pytest.mark.slow
def test_the_default_router_decides_the_same_on_onnx_as_on_torch(data_dir, embedding_cache):
    """Its heads were fitted on PyTorch features: int8 features must keep the ranking on real prompts."""
    rows = read_routellm_evals(data_dir)
    prompts = [r.prompt for r in rows[:: len(rows) // 300]][:300]
    scores = {}
    for backend in ("torch", "onnx"):
        runtime = RouterRuntime(device="cpu", cache_dir=embedding_cache, encoder_backend=backend)
        loaded = load_router(DEFAULT_ROUTER, runtime)
        assert loaded.router.embedder.backend == backend
        assert loaded.version == load_router(DEFAULT_ROUTER, RouterRuntime(encoder_backend="torch")).version
        scores[backend] = loaded.router.win_rate(prompts)
    torch_scores, onnx_scores = scores["torch"], scores["onnx"]
    assert spearmanr(torch_scores, onnx_scores)[0] >= 0.99
    k = round(0.3 * len(prompts))  # a job at --strong-fraction 0.3 sends its top 30% strong
    strong_torch = set(np.argsort(-torch_scores)[:k].tolist())
    strong_onnx = set(np.argsort(-onnx_scores)[:k].tolist())
    assert len(strong_torch ^ strong_onnx) / 2 <= 0.05 * k  # at most 5% of the strong items swap
    assert np.abs(torch_scores - onnx_scores).max() < 0.05

