#!/usr/bin/env python3
"""The model store: a DVC remote in the git-tracked folder ``store/`` (``remote: store`` on the
trained models' outputs in dvc.yaml), so trained models survive a fresh clone.

    python scripts/store.py pull            # setup: the external inputs and every stored model
    python scripts/store.py push [STAGE..]  # after training: push, prune, `git add store`
    python scripts/store.py prune           # drop objects that dvc.lock no longer references
    python scripts/store.py size            # what the store holds, per stage

``push`` without stages pushes every stage of dvc.lock with an output under ``artifacts/``
(prepared data, trained models, evaluations: all carry ``remote: store``) whose files are in the
workspace. ``prune`` keeps exactly the objects (files and ``.dir`` listings) that some
output of dvc.lock references, so an old checkpoint leaves the store's working tree (git history
keeps it) once its stage has moved on. Run from the repository root.
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


def cmd_push(args) -> None:
    stages = args.stages or [
        s for s, outs in lock_outs().items()
        if any(o["path"].startswith("artifacts/") for o in outs) and all((ROOT / o["path"]).exists() for o in outs)]
    if not stages:
        sys.exit("nothing to push: no trained model of dvc.lock is in the workspace")
    run("push", "-q", *stages)
    cmd_prune(args)
    subprocess.run(["git", "add", "-A", "store"], cwd=ROOT, check=True)
    cmd_size(args)


def cmd_prune(_args) -> None:
    keep = set()
    for outs in lock_outs().values():
        for o in outs:
            if "md5" in o:
                keep |= referenced(o["md5"])
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
    total = sum(p.stat().st_size for p in OBJECTS.glob("*/*")) if OBJECTS.is_dir() else 0
    for stage, size in sorted(stored_stages().items()):
        print(f"{stage:24s} {size / 2**20:8.1f} MiB")
    print(f"{'store/ in all':24s} {total / 2**20:8.1f} MiB")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("pull").set_defaults(fn=cmd_pull)
    push = sub.add_parser("push")
    push.add_argument("stages", nargs="*")
    push.set_defaults(fn=cmd_push)
    sub.add_parser("prune").set_defaults(fn=cmd_prune)
    sub.add_parser("size").set_defaults(fn=cmd_size)
    args = parser.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
