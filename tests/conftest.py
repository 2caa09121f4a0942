import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("FACEINPAINT_MLFLOW", "0")  # tests that need MLflow switch it on themselves


@pytest.fixture(autouse=True)
def _repo_root(monkeypatch):
    """Every test runs from the repository root, where params.yaml and data/ live."""
    monkeypatch.chdir(ROOT)


def require_data():
    if not (ROOT / "data" / "celeba" / "test").is_dir():
        pytest.skip("data/ not pulled (run `dvc pull`)")
