"""The ML stack's imports on first use are safe from two threads at once (trial finding 2): transformers' lazy
module is not thread-safe, and the API runs jobs on two threads, so two jobs loading routers at once in a fresh
process could fail one with `ImportError: cannot import name 'AutoTokenizer'`. Each run is a fresh process: the
race only exists before transformers has been imported once."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

RACE = """
import json, sys, threading
from pathlib import Path

import routers.registry, routers.onnx_encoder  # imported at start, as the API process has them
from routers.onnx_encoder import OnnxLayerEncoder

barrier, seen = threading.Barrier(4), []

def load() -> None:
    barrier.wait()  # all four reach the first import of transformers together
    try:
        OnnxLayerEncoder(Path(sys.argv[1]), Path(sys.argv[1]))  # imports, then finds no config.json
    except Exception as exc:
        seen.append(type(exc).__name__ + ": " + str(exc)[:200])

threads = [threading.Thread(target=load) for _ in range(4)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print(json.dumps(seen))
"""


@pytest.mark.slow  # two fresh processes, each importing transformers and onnxruntime: about 20 s here
def test_four_threads_loading_an_encoder_in_a_fresh_process_all_import_transformers(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[1]
    for _ in range(2):  # without the lock this failed every time (3 of 3 threads); twice, in fresh processes
        done = subprocess.run([sys.executable, "-c", RACE, str(tmp_path / "no-model")], cwd=root, text=True,
                              capture_output=True, timeout=300, check=True)
        seen = json.loads(done.stdout.strip().splitlines()[-1])
        assert len(seen) == 4, seen
        assert all(s.startswith("FileNotFoundError") for s in seen), seen  # got past the imports, every thread
