"""The default encoder (MiniLM) served through ONNX Runtime, int8, for scoring on a CPU.

Why: on a CPU, embedding is most of a learned router's cost (65-81% of a job's time with the ML routers).
The same network exported to ONNX with int8 weights (dynamic quantisation: activations quantised per call)
runs its matrix products in integer arithmetic, and batches cut by token length pad almost nothing.

What it computes is exactly what `Embedder` computes with PyTorch: every layer's token states (the word
embeddings and each transformer layer) mean-pooled over the attention mask, concatenated; the sentence
embedding is the top layer's mean, unit-normalised (all-MiniLM-L6-v2 is Transformer + mean Pooling +
Normalize). The router heads were trained on the PyTorch numbers, so the quantisation must keep the ranking:
weights are quantised per output channel (per-tensor int8 changed 4.7% of the decisions at a 30% strong
share, per channel 1.3%; tests/test_onnx_encoder.py and benchmarks/encoder_speed.py hold it to a Spearman
correlation >= 0.99 with PyTorch).

The export runs once per set of weights, at first use, from the weights installed offline (no hub), and is
cached under the settings' cache dir, named by the weights' fingerprint and the export recipe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

try:
    import fcntl
except ImportError:  # not POSIX: threads are still serialised; processes may each export, renamed atomically
    fcntl = None  # type: ignore[assignment]

# Bump when the export or the quantisation changes: a cached model from another recipe is not reused.
RECIPE = "layers-mean-v1-int8-perchannel"
# Rows x padded length per call. Small calls keep a batch's activations in the CPU's cache: on the 2-core
# machine of benchmarks/encoder_speed.py, 1024 tokens a call scored faster than 4096 or 8192.
MAX_BATCH_TOKENS = 1024


def fingerprint(model_dir: Path) -> str:
    """sha256 over the weights and the config that shapes the network: a changed file is a new export."""
    digest = hashlib.sha256(RECIPE.encode())
    for name in ("config.json", "model.safetensors"):
        with (model_dir / name).open("rb") as fh:
            for block in iter(lambda: fh.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()[:24]


def _export(model_dir: Path, out: Path) -> None:
    """PyTorch -> ONNX (fp32) -> int8 weights, written to `out` only when whole."""
    import onnx
    import torch  # here, not above: only an export needs torch
    from onnxruntime.quantization import QuantType, quantize_dynamic

    from routers.ml_imports import ML_IMPORT_LOCK

    with ML_IMPORT_LOCK:
        from transformers import AutoModel

    # Eager attention: the sdpa path decides from the mask's values whether to pass a mask at all, and
    # tracing would freeze that decision.
    model = AutoModel.from_pretrained(str(model_dir), attn_implementation="eager").eval()

    class LayerMeans(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.model = model

        def forward(self, input_ids: Any, attention_mask: Any, token_type_ids: Any) -> Any:
            states = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids,
                                output_hidden_states=True).hidden_states
            mask = attention_mask.unsqueeze(-1).to(states[0].dtype)
            count = mask.sum(1).clamp(min=1.0)
            return torch.cat([(h * mask).sum(1) / count for h in states], dim=1)

    ids = torch.tensor([[101, 7592, 2088, 102], [101, 7592, 102, 0]])
    inputs = (ids, (ids > 0).long(), torch.zeros_like(ids))
    names = ["input_ids", "attention_mask", "token_type_ids"]
    out.parent.mkdir(parents=True, exist_ok=True)
    # The tracer warns about shapes it freezes (none matter here: no branch depends on the batch's values) and
    # the quantiser suggests a pre-processing pass per-channel int8 does not need: neither is the user's concern.
    quiet = logging.getLogger()
    level = quiet.level
    with tempfile.TemporaryDirectory(dir=out.parent) as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        quiet.setLevel(logging.ERROR)
        try:
            traced = Path(tmp) / "traced.onnx"
            with torch.inference_mode():
                torch.onnx.export(LayerMeans().eval(), inputs, str(traced), input_names=names,
                                  output_names=["layers"], opset_version=17, dynamo=False,
                                  dynamic_axes={**{n: {0: "rows", 1: "tokens"} for n in names},
                                                "layers": {0: "rows"}})
            int8 = Path(tmp) / "int8.onnx"
            quantize_dynamic(str(traced), str(int8), weight_type=QuantType.QInt8, per_channel=True,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        finally:
            quiet.setLevel(level)
        os.replace(int8, out)  # atomic: a concurrent process sees the old state or the whole file


# torch.onnx.export keeps process-wide state (GLOBALS.in_onnx_export): two exports at once in one process, as
# Celery's threads pool runs tasks, fail each other's assertions. One export at a time per process.
_EXPORT_LOCK = threading.Lock()


@contextmanager
def _cache_lock(path: Path) -> Iterator[None]:
    """Held by one process at a time among those sharing the cache dir, so a model is exported once, not once
    per worker (the rename in `_export` already keeps a reader from seeing half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        if fcntl is not None:
            fcntl.flock(fh, fcntl.LOCK_EX)
        yield  # closing the file releases the lock, even if the export raised


def exported_model(model_dir: Path, cache_dir: Path) -> Path:
    """The cached int8 model for these weights, exported now if there is none (once, however many threads and
    processes ask at the same moment: the others wait for it)."""
    path = cache_dir / "onnx" / f"minilm-{fingerprint(model_dir)}.onnx"
    if path.is_file():
        return path
    with _EXPORT_LOCK, _cache_lock(path.with_name(f"{path.name}.lock")):
        if not path.is_file():  # another thread or process may have exported it while this one waited
            _export(model_dir, path)
    return path


class OnnxLayerEncoder:
    """Every layer's mean-pooled states of a BERT-style encoder, from its cached int8 ONNX export."""

    def __init__(self, model_dir: Path, cache_dir: Path, batch_size: int = 64) -> None:
        import onnxruntime as ort

        from routers.ml_imports import ML_IMPORT_LOCK

        with ML_IMPORT_LOCK:
            from transformers import AutoTokenizer

        config = json.loads((model_dir / "config.json").read_text())
        self.width = int(config["hidden_size"])
        self.layers = int(config["num_hidden_layers"]) + 1
        st_config = model_dir / "sentence_bert_config.json"
        self.max_length = int(json.loads(st_config.read_text()).get("max_seq_length", 256)) \
            if st_config.is_file() else 256
        self.batch_size = batch_size
        self.tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # Threads that spin between operators hold a core the job's other threads (and other processes on a
        # small machine) need; waiting instead measured faster under load and no slower idle.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        # One thread per call, and as many calls at once as there are cores: a batch of a few hundred tokens
        # is too small to split across cores without each operator waiting for its slowest thread, so whole
        # batches run side by side instead (benchmarks/encoder_speed.py measured 10-20% more prompts/s on 2
        # cores than one two-thread call at a time).
        options.intra_op_num_threads = 1
        self.parallel = max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
                            (os.cpu_count() or 1))
        self.session = ort.InferenceSession(str(exported_model(model_dir, cache_dir)), options,
                                            providers=["CPUExecutionProvider"])

    @property
    def dim(self) -> int:
        return self.width * self.layers

    def encode(self, texts: list[str]) -> np.ndarray:
        """(n, layers x width) float32: each layer's mean over the prompt's tokens."""
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        if not texts:
            return out
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length)["input_ids"]
        order = np.argsort([len(i) for i in ids], kind="stable")  # like lengths together: almost no padding
        batches: list[np.ndarray] = []
        start = 0
        while start < len(order):
            stop = start + 1
            while (stop < len(order) and stop - start < self.batch_size
                   and (stop - start + 1) * len(ids[order[stop]]) <= MAX_BATCH_TOKENS):
                stop += 1
            batches.append(order[start:stop])
            start = stop

        def run(rows: np.ndarray) -> None:
            longest = len(ids[rows[-1]])
            input_ids = np.full((len(rows), longest), self.tokenizer.pad_token_id or 0, dtype=np.int64)
            mask = np.zeros((len(rows), longest), dtype=np.int64)
            for r, i in enumerate(rows):
                input_ids[r, : len(ids[i])] = ids[i]
                mask[r, : len(ids[i])] = 1
            out[rows] = self.session.run(None, {"input_ids": input_ids, "attention_mask": mask,
                                                "token_type_ids": np.zeros_like(input_ids)})[0]

        # Longest first, so the last batches to finish are short ones and no core waits long at the end.
        batches.sort(key=lambda rows: -len(rows) * len(ids[rows[-1]]))
        if self.parallel == 1 or len(batches) == 1:
            for rows in batches:
                run(rows)
        else:  # ONNX Runtime releases the GIL inside run(): the threads' calls overlap
            with ThreadPoolExecutor(min(self.parallel, len(batches))) as pool:
                list(pool.map(run, batches))
        return out

    def sentence(self, texts: list[str]) -> np.ndarray:
        """The sentence embedding: the top layer's mean, unit-normalised (Pooling + Normalize)."""
        top = self.encode(texts)[:, -self.width :]
        return top / np.clip(np.linalg.norm(top, axis=1, keepdims=True), 1e-12, None)
