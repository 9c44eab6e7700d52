"""The ONNX export of the default encoder runs once when several threads of one worker process (Celery's
threads pool) ask for it on an empty cache: torch's exporter keeps process-wide state, and two exports at once
failed each other's tasks (`AssertionError: GLOBALS.in_onnx_export must be False`)."""

import threading
import time
from pathlib import Path

import pytest

from routers import onnx_encoder
from routers.embeddings import DEFAULT_ENCODER, resolve_encoder_path

MINILM_DIR = Path(resolve_encoder_path(DEFAULT_ENCODER))


@pytest.mark.slow  # one export of MiniLM: seconds to a minute on a loaded CPU
def test_threads_asking_at_once_on_an_empty_cache_export_once(tmp_path, monkeypatch):
    exports: list[float] = []
    export = onnx_encoder._export

    def counted(model_dir: Path, out: Path) -> None:
        exports.append(time.monotonic())
        export(model_dir, out)

    monkeypatch.setattr(onnx_encoder, "_export", counted)
    start = threading.Barrier(4)
    paths: list[Path] = []
    errors: list[BaseException] = []

    def ask() -> None:
        start.wait()
        try:
            paths.append(onnx_encoder.exported_model(MINILM_DIR, tmp_path))
        except BaseException as exc:  # the assertion below shows what each thread raised
            errors.append(exc)

    threads = [threading.Thread(target=ask) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(exports) == 1
    assert len(set(paths)) == 1 and paths[0].is_file() and len(paths) == 4
    assert not list((tmp_path / "onnx").glob("tmp*"))  # no half-written export left behind
