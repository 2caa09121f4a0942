"""The model store: its submission count (``scripts/store.py submission``: the text of ``git diff
--binary`` summed over a sitting's commits, against the size a binary patch must have, base85 of
deflated bytes: 65 characters and a length byte per 52 bytes of incompressible data), its pull
(objects linked, not copied, with ``dvc status`` clean) and the stages' care never to write into
a linked file."""

import importlib.util
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml

from test_reliability import prepared  # noqa: F401 - the shared smoke data folder (a fixture)

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


def test_pull_links_store_objects_and_leaves_dvc_status_clean(store, tmp_path, monkeypatch):
    """A pull from a local remote hard-links each object (a folder output's listing and files)
    into .dvc/cache and DVC links it into the workspace: one copy of the bytes on disk, and DVC
    finds the output unchanged."""
    repo, remote = tmp_path / "repo", tmp_path / "remote"
    repo.mkdir()
    git(repo, "init", "-q")
    dvc = lambda *a: subprocess.run([*store.DVC, *a], cwd=repo, check=True, capture_output=True, text=True).stdout
    dvc("init", "-q")
    dvc("config", "cache.type", "reflink,hardlink,symlink,copy")
    dvc("remote", "add", "store", str(remote))
    out = repo / "artifacts" / "model"
    out.mkdir(parents=True)
    payload = {"model.pt": np.arange(1000, dtype=np.float32).tobytes(), "runs/a/latest.pt": b"state" * 999}
    for name, data in payload.items():
        (out / name).parent.mkdir(parents=True, exist_ok=True)
        (out / name).write_bytes(data)
    dvc("add", "-q", "artifacts/model")
    dvc("push", "-q", "-r", "store")
    md5 = yaml.safe_load((repo / "artifacts" / "model.dvc").read_text())["outs"][0]["md5"]
    # a fresh clone: no cache, no workspace copy
    shutil.rmtree(repo / ".dvc" / "cache")
    shutil.rmtree(out)
    monkeypatch.setattr(store, "ROOT", repo)
    assert store.remote_objects("store") == remote / "files" / "md5"
    how = store.fetch("store", ["artifacts/model.dvc"], [md5])
    assert "copied" in how
    for name, data in payload.items():
        assert (out / name).read_bytes() == data
        stored = [p for p in (remote / "files" / "md5").glob("*/*") if p.read_bytes() == data]
        assert len(stored) == 1 and os.path.samefile(stored[0], out / name)  # workspace -> cache -> store: one inode
    assert "up to date" in dvc("status")
    # an object the remote lacks: not linkable, so `dvc pull` would have to fetch it
    assert store.link_into_cache(remote / "files" / "md5", ["0" * 32]) is None
    # a copy in the cache (an earlier pull's) stays one, unless relinked (`pull --relink`)
    cached = next(p for p in (repo / ".dvc" / "cache" / "files" / "md5").glob("*/*") if not p.name.endswith(".dir"))
    obj, data = remote / "files" / "md5" / cached.parent.name / cached.name, cached.read_bytes()
    cached.unlink()
    cached.write_bytes(data)
    assert store.link_into_cache(remote / "files" / "md5", [md5]) == (0, 0) and not os.path.samefile(obj, cached)
    assert store.link_into_cache(remote / "files" / "md5", [md5], relink=True) == (len(data), 0)
    assert os.path.samefile(obj, cached) and cached.read_bytes() == data


def test_detach_links_gives_linked_files_their_own_copy(tmp_path):
    """After detach_links, writing into an output file leaves the cache object it was linked to intact."""
    from faceinpaint.checkpoint import detach_links

    cache, out = tmp_path / "cache", tmp_path / "out"
    cache.mkdir()
    (out / "runs").mkdir(parents=True)
    (cache / "a").write_bytes(b"cached stats\n")
    (cache / "b").write_bytes(b"cached export")
    os.link(cache / "a", out / "runs" / "stats.jsonl")
    os.symlink(cache / "b", out / "model.pt")
    (out / "own.json").write_text("{}")
    assert detach_links(out) == 2
    assert detach_links(out) == 0  # idempotent
    with open(out / "runs" / "stats.jsonl", "a") as f:
        f.write("appended\n")
    (out / "model.pt").write_bytes(b"new export")
    assert (cache / "a").read_bytes() == b"cached stats\n" and (cache / "b").read_bytes() == b"cached export"
    assert not (out / "model.pt").is_symlink() and (out / "runs" / "stats.jsonl").stat().st_nlink == 1
    assert sorted(p.name for p in out.rglob("*")) == ["model.pt", "own.json", "runs", "stats.jsonl"]


def test_training_never_writes_into_a_linked_file_and_names_a_missing_state(tmp_path, prepared):
    """With the model's files hard-linked to a cache (as `store.py pull` leaves them), a continued
    run appends to its logs and rewrites its export in private copies: the cached bytes stay as
    they were. A run whose training state is gone is refused, naming the file and the pull."""
    from test_reliability import project_with_data, run, set_params

    project = project_with_data(tmp_path / "p", prepared, "pconv", max_steps=2)
    run(project, "train", "pconv")
    model_dir = project / "artifacts/models/pconv"
    cache = tmp_path / "cache"
    cache.mkdir()
    cached = {}
    for i, path in enumerate(sorted(p for p in model_dir.rglob("*") if p.is_file())):
        os.link(path, cache / str(i))
        cached[cache / str(i)] = path.read_bytes()
    set_params(project, "pconv", max_steps=4)
    assert "4 steps" in run(project, "train", "pconv").stdout
    assert all(p.read_bytes() == data for p, data in cached.items())
    (run_dir,) = (model_dir / "runs").iterdir()
    stats = (run_dir / "stats.jsonl").read_bytes()
    assert b'"step": 4' in stats and stats not in cached.values()  # the run went on, in its own copy

    shutil.rmtree(run_dir / "checkpoints")
    set_params(project, "pconv", max_steps=6)
    out = run(project, "train", "pconv", check=False)
    assert out.returncode != 0, out.stdout
    assert f"{run_dir.name}/checkpoints/latest.pt" in out.stderr and "scripts/store.py pull" in out.stderr
    assert (run_dir / "stats.jsonl").read_bytes() == stats  # nothing restarted over the run's logs
