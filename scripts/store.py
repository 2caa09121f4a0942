#!/usr/bin/env python3
"""The model store: a DVC remote in the git-tracked folder ``store/`` (``remote: store`` on the
trained models' outputs in dvc.yaml), so trained models survive a fresh clone.

    python scripts/store.py pull            # setup: the external inputs and every stored model
    python scripts/store.py push [STAGE..]  # after training: push, `git add store`, submission size
    python scripts/store.py prune           # drop objects that dvc.lock no longer references
    python scripts/store.py size            # what the store holds, per stage
    python scripts/store.py submission      # what the commits since the pull (and the index) submit

``push`` without stages pushes every stage of dvc.lock with an output under ``artifacts/``
(prepared data, trained models, evaluations: all carry ``remote: store``) whose files are in the
workspace. ``prune`` keeps exactly the objects (files and ``.dir`` listings) that some
output of dvc.lock references, so an old checkpoint leaves the store's working tree once its
stage has moved on.

Pruning does not make the repository smaller (git history keeps every object), and a removed
object counts in a submission's diff like an added one. A submission (the commits one sitting
lands) may carry at most 256 MiB of diffs, counted as the text of ``git diff --binary`` of each
commit: about 1.29 times the bytes of every checkpoint added *or removed* (base85 lines of incompressible
weights: 67 characters per 52 bytes). So ``push`` does not prune unless asked (``push --prune``), and both ``push`` and
``submission`` print that count against the limit: prune in a sitting that adds little.
Run from the repository root.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
STORE = ROOT / "store"
OBJECTS = STORE / "files" / "md5"
DVC = [sys.executable, "-m", "dvc"]
SUBMISSION_LIMIT = 256 * 2**20   # bytes of `git diff --binary` text, summed over a submission's commits
SITTING_BASE = ROOT / ".dvc" / "tmp" / "store_pulled_at"  # HEAD when the store was last pulled (not in git)


def lock_outs() -> dict[str, list[dict]]:
    """``stage -> [out entries]`` of dvc.lock."""
    lock = yaml.safe_load((ROOT / "dvc.lock").read_text()) or {}
    return {name: stage.get("outs", []) for name, stage in lock.get("stages", {}).items()}


def object_path(md5: str) -> Path:
    return OBJECTS / md5[:2] / md5[2:]


def referenced(md5: str) -> set[str]:
    """The object ids behind one output: itself, plus the files of a ``.dir`` listing (read from
    the store, else from the local cache)."""
    out = {md5}
    if md5.endswith(".dir"):
        for base in (OBJECTS, ROOT / ".dvc" / "cache" / "files" / "md5"):
            listing = base / md5[:2] / md5[2:]
            if listing.is_file():
                out |= {entry["md5"] for entry in json.loads(listing.read_text())}
                break
    return out


def stored_stages() -> dict[str, int]:
    """Stages of dvc.lock whose outputs are complete in the store, with their size in bytes."""
    found = {}
    for stage, outs in lock_outs().items():
        hashed = [o for o in outs if "md5" in o and o["path"].startswith("artifacts/")]  # cache: false outs stay in git
        if hashed and all(object_path(o["md5"]).is_file() for o in hashed):
            ids = set().union(*(referenced(o["md5"]) for o in hashed))
            if all(object_path(i).is_file() for i in ids):
                found[stage] = sum(object_path(i).stat().st_size for i in ids)
    return found


def run(*args: str) -> None:
    print("+ dvc", " ".join(args), flush=True)
    subprocess.run([*DVC, *args], cwd=ROOT, check=True)


def cmd_pull(_args) -> None:
    run("pull", "-q", "data.dvc")
    stages = sorted(stored_stages())
    if stages:
        run("pull", "-q", *stages)
    print(f"stored models pulled: {', '.join(stages) or 'none'}")
    head = _git("rev-parse", "HEAD", cwd=ROOT).decode().strip()
    SITTING_BASE.parent.mkdir(parents=True, exist_ok=True)
    SITTING_BASE.write_text(head + "\n")


def cmd_push(args) -> None:
    stages = args.stages or [
        s for s, outs in lock_outs().items()
        if any(o["path"].startswith("artifacts/") for o in outs) and all((ROOT / o["path"]).exists() for o in outs)]
    if not stages:
        sys.exit("nothing to push: no trained model of dvc.lock is in the workspace")
    run("push", "-q", *stages)
    if args.prune:
        cmd_prune(args)
    subprocess.run(["git", "add", "-A", "store"], cwd=ROOT, check=True)
    cmd_size(args)
    args.base = None
    cmd_submission(args)


def lock_objects() -> set[str]:
    """Every object id (files and ``.dir`` listings) that some output of dvc.lock references."""
    keep = set()
    for outs in lock_outs().values():
        for o in outs:
            if "md5" in o:
                keep |= referenced(o["md5"])
    return keep


def cmd_prune(_args) -> None:
    keep = lock_objects()
    removed = 0
    for path in sorted(OBJECTS.glob("*/*")) if OBJECTS.is_dir() else []:
        if path.parent.name + path.name not in keep:
            removed += path.stat().st_size
            path.unlink()
    for folder in OBJECTS.glob("*") if OBJECTS.is_dir() else []:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    print(f"pruned {removed / 2**20:.1f} MiB of objects no longer referenced by dvc.lock")


def cmd_size(_args) -> None:
    objects = {p.parent.name + p.name: p.stat().st_size for p in OBJECTS.glob("*/*")} if OBJECTS.is_dir() else {}
    keep = lock_objects()
    for stage, size in sorted(stored_stages().items()):
        print(f"{stage:24s} {size / 2**20:8.1f} MiB")
    stale = sum(size for md5, size in objects.items() if md5 not in keep)
    if stale:
        print(f"{'not in dvc.lock (prune)':24s} {stale / 2**20:8.1f} MiB")
    print(f"{'store/ in all':24s} {sum(objects.values()) / 2**20:8.1f} MiB", flush=True)


def _git(*args: str, cwd: Path) -> bytes:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True).stdout


def _diff_bytes(repo: Path, *args: str) -> int:
    """Length of ``git diff --binary ARGS`` (streamed: checkpoint diffs run to hundreds of MB)."""
    proc = subprocess.Popen(["git", "diff", "--binary", "--no-color", "--no-ext-diff", *args], cwd=repo,
                            stdout=subprocess.PIPE)
    total = 0
    while chunk := proc.stdout.read(1 << 20):
        total += len(chunk)
    if proc.wait():
        raise subprocess.CalledProcessError(proc.returncode, proc.args)
    return total


def submission_bytes(repo: Path, base: str) -> dict[str, int]:
    """The diff text a submission of ``base..HEAD`` plus the staged changes carries, per commit
    (``git diff --binary`` of each commit against its first parent) and for the index."""
    commits = _git("rev-list", "--reverse", "--first-parent", f"{base}..HEAD", cwd=repo).decode().split()
    sizes = {c[:10]: _diff_bytes(repo, f"{c}^", c) for c in commits}
    sizes["index (staged)"] = _diff_bytes(repo, "--cached", "HEAD")
    return sizes


def cmd_submission(args) -> None:
    base = args.base or (SITTING_BASE.read_text().strip() if SITTING_BASE.is_file() else None)
    if base is None:
        sys.exit(f"no base commit: pass --base REV (the commit the sitting started from); {SITTING_BASE} is written "
                 "by `store.py pull`")
    sizes = submission_bytes(ROOT, base)
    total = sum(sizes.values())
    for name, size in sizes.items():
        print(f"  {name:24s} {size / 2**20:8.1f} MiB")
    sys.stdout.flush()
    share = total / SUBMISSION_LIMIT
    print(f"submission since {base[:10]}: {total / 2**20:.1f} MiB of diff text, {share:.0%} of the "
          f"{SUBMISSION_LIMIT // 2**20} MiB limit", flush=True)
    if share > 1:
        sys.exit("over the limit: the submission would be rejected whole; store fewer checkpoints this sitting "
                 "(and do not prune: a removed object counts too)")
    if share > 0.85:
        print("warning: close to the limit; add nothing large before the submission", file=sys.stderr)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("pull").set_defaults(fn=cmd_pull)
    push = sub.add_parser("push")
    push.add_argument("stages", nargs="*")
    push.add_argument("--prune", action="store_true",
                      help="also drop unreferenced objects (each counts in the submission's diff)")
    push.set_defaults(fn=cmd_push)
    sub.add_parser("prune").set_defaults(fn=cmd_prune)
    sub.add_parser("size").set_defaults(fn=cmd_size)
    submission = sub.add_parser("submission")
    submission.add_argument("--base", help="the commit the sitting started from (default: HEAD at the last pull)")
    submission.set_defaults(fn=cmd_submission)
    args = parser.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
