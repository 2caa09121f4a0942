#!/usr/bin/env python3
"""The model store: a DVC remote in the git-tracked folder ``store/`` (``remote: store`` on the
trained models' outputs in dvc.yaml), so trained models survive a fresh clone.

    python scripts/store.py pull            # setup: the external inputs and every stored model (linked)
    python scripts/store.py pull --relink   # the same, turning an earlier pull's copies into links
    python scripts/store.py push [STAGE..]  # after training: push, `git add store`, submission size
    python scripts/store.py prune [--max-mib N]  # drop objects that dvc.lock no longer references
    python scripts/store.py size            # what the store holds, per stage
    python scripts/store.py submission      # what the commits since the pull (and the index) submit

``pull`` links rather than copies: each object of a local remote (``store/``, and the ``shared``
remote when it is a folder on this machine) is hard-linked into ``.dvc/cache`` (copied where the
file system cannot link), and ``dvc checkout`` links the cache into the workspace by
``cache.type`` (``.dvc/config``: reflink, else hardlink, else symlink, else copy). So a pulled
model costs its bytes once, in ``store/``, which git checks out anyway: the training states
(``latest.pt``) come along at no cost. They must: DVC counts a folder output with a file missing
as modified, so a pull without them would make ``dvc repro`` retrain every model. A stage never
writes into a linked file: :func:`faceinpaint.checkpoint.detach_links` gives each output its own
copy of such files before the stage writes (``dvc repro`` unprotects persistent outputs itself).

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
import os
import shutil
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


def remote_objects(name: str) -> Path | None:
    """The object folder (``files/md5``) of DVC remote ``name`` when it is a folder on this
    machine, else None."""
    from dvc.config import Config

    url = Config(dvc_dir=str(ROOT / ".dvc")).get("remote", {}).get(name, {}).get("url", "")
    path = Path(url) if "://" not in url else None
    return path / "files" / "md5" if path is not None and (path / "files" / "md5").is_dir() else None


def link_into_cache(objects: Path, md5s: list[str], relink: bool = False) -> tuple[int, int] | None:
    """Put every object behind ``md5s`` (outputs' hashes, ``.dir`` listings expanded) from the
    local remote folder ``objects`` into ``.dvc/cache``: a hard link, or a copy (written beside
    it and renamed) where the file system refuses links. With ``relink``, a cache file that is a
    copy of its object (an earlier pull's) becomes a link too. Returns (bytes linked, bytes
    copied), or None when some object is not in ``objects`` (then ``dvc pull`` must fetch)."""
    cache = ROOT / ".dvc" / "cache" / "files" / "md5"
    ids: set[str] = set()
    for md5 in md5s:
        ids |= {md5}
        listing = objects / md5[:2] / md5[2:]
        if md5.endswith(".dir") and listing.is_file():
            ids |= {entry["md5"] for entry in json.loads(listing.read_text())}
    if not all((objects / i[:2] / i[2:]).is_file() for i in ids):
        return None
    linked = copied = 0
    for i in sorted(ids):
        src, dst = objects / i[:2] / i[2:], cache / i[:2] / i[2:]
        if dst.is_file() and (not relink or os.path.samefile(src, dst)):
            continue
        dst.parent.mkdir(parents=True, exist_ok=True)
        tmp = dst.with_name(dst.name + ".tmp")
        tmp.unlink(missing_ok=True)
        try:
            os.link(src, tmp)
            linked += src.stat().st_size
        except OSError:
            if dst.is_file():  # already a copy: keep it
                continue
            shutil.copyfile(src, tmp)
            copied += src.stat().st_size
        os.replace(tmp, dst)
    return linked, copied


def fetch(remote: str, targets: list[str], md5s: list[str], relink: bool = False) -> str:
    """Bring ``targets`` (a .dvc file or stages) into the workspace: linked from a local remote,
    else ``dvc pull``; returns how."""
    objects = remote_objects(remote)
    moved = link_into_cache(objects, md5s, relink) if objects is not None else None
    if moved is None:
        run("pull", "-q", "-r", remote, *targets)
        return "pulled"
    run("checkout", "-q", *(["--relink"] if relink else []), *targets)
    return f"{moved[0] / 2**20:.1f} MiB linked, {moved[1] / 2**20:.1f} MiB copied into .dvc/cache"


def cmd_pull(args) -> None:
    data = yaml.safe_load((ROOT / "data.dvc").read_text())["outs"]
    print(f"external inputs: {fetch('shared', ['data.dvc'], [o['md5'] for o in data], args.relink)}", flush=True)
    inputs = [n for n in STORED_INPUTS if (ROOT / n).is_file()]
    if inputs:
        print(f"stored inputs: {fetch('store', inputs, stored_input_md5s(), args.relink)}", flush=True)
    stages = sorted(stored_stages())
    if stages:
        md5s = [o["md5"] for s in stages for o in lock_outs()[s] if "md5" in o and o["path"].startswith("artifacts/")]
        print(f"stored stages: {fetch('store', stages, md5s, args.relink)}", flush=True)
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


STORED_INPUTS = ("unseen_sources.dvc",)  # .dvc files of inputs kept in the store (no stage makes them)


def stored_input_md5s() -> list[str]:
    """The output hashes of :data:`STORED_INPUTS` (``remote: store`` outputs of those .dvc files)."""
    md5s = []
    for name in STORED_INPUTS:
        path = ROOT / name
        if path.is_file():
            md5s += [o["md5"] for o in yaml.safe_load(path.read_text())["outs"] if o.get("remote") == "store"]
    return md5s


def lock_objects() -> set[str]:
    """Every object id (files and ``.dir`` listings) that some output of dvc.lock, or of a stored
    input's .dvc file (:data:`STORED_INPUTS`), references."""
    keep = set()
    for outs in lock_outs().values():
        for o in outs:
            if "md5" in o:
                keep |= referenced(o["md5"])
    for md5 in stored_input_md5s():
        keep |= referenced(md5)
    return keep


def cmd_prune(args) -> None:
    """Remove the objects that no output of dvc.lock references: all of them, or with
    ``--max-mib N`` the largest that fit in N MiB together (a removal counts in the submission's
    diff like an addition, so a large backlog is pruned over several sittings)."""
    keep = lock_objects()
    stale = [p for p in sorted(OBJECTS.glob("*/*")) if p.parent.name + p.name not in keep] if OBJECTS.is_dir() else []
    limit = None if getattr(args, "max_mib", None) is None else args.max_mib * 2**20
    removed = 0
    for path in sorted(stale, key=lambda p: (-p.stat().st_size, p.name)):
        size = path.stat().st_size
        if limit is not None and removed + size > limit:
            continue
        removed += size
        path.unlink()
    for folder in OBJECTS.glob("*") if OBJECTS.is_dir() else []:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    left = sum(p.stat().st_size for p in stale if p.exists())
    print(f"pruned {removed / 2**20:.1f} MiB of objects no longer referenced by dvc.lock"
          + (f"; {left / 2**20:.1f} MiB of them left for a later sitting" if left else ""))


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
    pull = sub.add_parser("pull")
    pull.add_argument("--relink", action="store_true",
                      help="also replace workspace copies of unchanged outputs by links (no training may be running)")
    pull.set_defaults(fn=cmd_pull)
    push = sub.add_parser("push")
    push.add_argument("stages", nargs="*")
    push.add_argument("--prune", action="store_true",
                      help="also drop unreferenced objects (each counts in the submission's diff)")
    push.set_defaults(fn=cmd_push)
    prune = sub.add_parser("prune")
    prune.add_argument("--max-mib", type=float, default=None,
                       help="remove at most this many MiB (largest objects first) so that the submission stays small")
    prune.set_defaults(fn=cmd_prune)
    sub.add_parser("size").set_defaults(fn=cmd_size)
    submission = sub.add_parser("submission")
    submission.add_argument("--base", help="the commit the sitting started from (default: HEAD at the last pull)")
    submission.set_defaults(fn=cmd_submission)
    args = parser.parse_args(argv)
    args.fn(args)


if __name__ == "__main__":
    main()
