"""The core install (no `ml` extra) runs the CLI, the API and embedded jobs with the `random` router; a learned
router there fails with a clear message, not an ImportError traceback. Proved by blocking the ML stack's imports
in a fresh interpreter, as if it were not installed."""

from __future__ import annotations

import subprocess
import sys

import pytest
from jobs_helpers import write_batch
from test_cli import ROOT, cli_env

ML_STACK = ("torch", "transformers", "sentence_transformers", "sklearn", "scipy", "safetensors")
LAUNCHER = f"""
import importlib.abc, sys

class NotInstalled(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {ML_STACK!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
        return None

sys.meta_path.insert(0, NotInstalled())
from jobs.cli import main
sys.argv = ["routeyard", *sys.argv[1:]]
main()
"""


def routeyard_without_ml(*args: str, env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LAUNCHER, *args], env=env, capture_output=True, text=True,
                          timeout=300, cwd=ROOT)


@pytest.mark.slow  # runs the CLI in fresh processes (seconds each)
def test_a_job_runs_end_to_end_without_the_ml_stack(tmp_path, loopback):
    env = cli_env(tmp_path / "home", None, loopback.base_url)
    batch = write_batch(tmp_path / "b.jsonl", [f"prompt {i}" for i in range(8)])
    proc = routeyard_without_ml("submit", str(batch), "--router", "random", env=env)
    assert proc.returncode == 0, proc.stderr
    assert "completed: succeeded 8" in proc.stdout


@pytest.mark.slow  # runs the CLI in fresh processes (seconds each)
def test_a_learned_router_without_the_ml_stack_is_a_clear_error(tmp_path, loopback):
    env = cli_env(tmp_path / "home", None, loopback.base_url)
    batch = write_batch(tmp_path / "b.jsonl", ["a prompt"])
    proc = routeyard_without_ml("submit", str(batch), "--router", "linear", env=env)
    assert proc.returncode == 2, proc.stderr
    assert "routeyard[ml]" in proc.stderr and "Traceback" not in proc.stderr
