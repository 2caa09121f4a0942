"""The model store's submission count (``scripts/store.py submission``): the text of ``git diff
--binary`` summed over a sitting's commits, against the size a binary patch must have (base85 of
deflated bytes: 65 characters and a length byte per 52 bytes of incompressible data)."""

import importlib.util
import subprocess
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def store():
    spec = importlib.util.spec_from_file_location("store_script", ROOT / "scripts" / "store.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def test_added_and_removed_checkpoints_both_count(store, tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "README").write_text("store\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "base")
    base = git(repo, "rev-parse", "HEAD")
    n = 1 << 20
    weights = np.random.default_rng(0).integers(0, 256, n, dtype=np.uint8).tobytes()  # incompressible
    patch = (n / 52) * 67  # base85 lines: length char + 65 characters + newline per 52 bytes

    (repo / "ckpt.pt").write_bytes(weights)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "add a checkpoint")
    added = store.submission_bytes(repo, base)
    assert list(added) == [git(repo, "rev-parse", "HEAD")[:10], "index (staged)"]
    assert added["index (staged)"] == 0
    assert 0.99 * patch < sum(added.values()) < 1.03 * patch

    (repo / "ckpt.pt").unlink()  # staged, not committed: the index counts too
    git(repo, "add", "-A")
    staged = store.submission_bytes(repo, base)
    assert 0.99 * patch < staged["index (staged)"] < 1.03 * patch

    git(repo, "commit", "-qm", "prune it")
    both = store.submission_bytes(repo, base)
    assert len(both) == 3 and both["index (staged)"] == 0
    # added in one commit and removed in a later one: counted twice, though the tree is unchanged
    assert 1.98 * patch < sum(both.values()) < 2.06 * patch
    assert git(repo, "diff", base, "HEAD") == ""
