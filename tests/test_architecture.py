"""The shape of the code, enforced: imports run one way, files stay small, front doors load no ML stack."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ["routeyard", "routers", "db", "worker", "jobs"]  # each may import only itself and those before it
MAX_LINES = 400


def product_files() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (ROOT / layer).rglob("*.py") if "pretrained" not in p.parts)


def imported_packages(path: Path) -> list[tuple[int, str]]:
    """(line, top-level package) of every import in the file, at module level and inside functions."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name.split(".")[0]) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module.split(".")[0]))
    return found


def test_imports_point_one_way():
    wrong = []
    for path in product_files():
        layer = LAYERS.index(path.relative_to(ROOT).parts[0])
        for line, package in imported_packages(path):
            if package in LAYERS and LAYERS.index(package) > layer:
                wrong.append(f"{path.relative_to(ROOT)}:{line} imports {package}")
    assert wrong == [], "imports must run routeyard <- routers <- db <- worker <- jobs:\n" + "\n".join(wrong)


def test_the_direction_check_catches_an_upward_import(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from jobs.services import retrain\n")
    assert imported_packages(bad) == [(2, "jobs")]


def test_no_product_file_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in product_files() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}


def test_routers_know_nothing_of_celery_or_sql():
    for path in (ROOT / "routers").rglob("*.py"):
        packages = {p for _, p in imported_packages(path)}
        assert not packages & {"celery", "sqlalchemy", "kombu", "alembic"}, path


@pytest.mark.parametrize("module", ["jobs.api", "jobs.services.submit", "worker.dispatch"])
def test_front_doors_and_completion_workers_load_no_ml_stack(module):
    """The API and the workers that only call models must run where torch is not installed."""
    code = (f"import sys, {module}; heavy = sorted(m for m in ('torch', 'transformers', 'sentence_transformers', "
            "'sklearn') if m in sys.modules); print(','.join(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert out.stdout.strip() == ""
