"""Atomic, self-validating training checkpoints.

A checkpoint directory holds at most two complete checkpoints::

    latest.pt     the newest
    previous.pt   the one before it

:func:`save_checkpoint` writes ``.latest.pt.<pid>.tmp`` in the same directory, fsyncs it, renames
``latest.pt`` to ``previous.pt`` and the temporary file to ``latest.pt`` (``os.replace`` is atomic
on POSIX), then fsyncs the directory. A kill at any moment therefore leaves a complete checkpoint:
before the first rename ``latest.pt`` is the old one, between the renames ``previous.pt`` is.

Every checkpoint carries a SHA-256 digest of its own content (tensor bytes, shapes, dtypes and
plain values). ``torch.load`` notices a truncated file but not a flipped bit inside tensor data
(it skips the zip CRC), so :func:`read_checkpoint` recomputes the digest and refuses a file whose
content changed. :func:`load_latest` falls back to ``previous.pt`` with a warning when
``latest.pt`` is unusable.

Files are plain ``torch.save`` dicts of tensors and Python values, readable with
``torch.load(path, weights_only=True)``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

log = logging.getLogger(__name__)

FORMAT = "faceinpaint-checkpoint/1"
LATEST = "latest.pt"
PREVIOUS = "previous.pt"
_DIGEST_KEY = "content_sha256"


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, altered, or does not fit the run; names the file."""


# ---------------------------------------------------------------------------------- digest


def content_digest(state: Any) -> str:
    """SHA-256 over a nested structure of tensors and plain Python values.

    Dict keys, container kinds, tensor dtypes, shapes and bytes all enter the hash, so any change
    of content changes the digest. Only types that ``torch.load(weights_only=True)`` restores are
    accepted; anything else raises ``TypeError`` naming its key path.
    """
    h = hashlib.sha256()
    _hash_into(h, state, "state")
    return h.hexdigest()


def _hash_into(h, obj: Any, where: str) -> None:
    if isinstance(obj, torch.Tensor):
        t = obj.detach().to("cpu").contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    elif isinstance(obj, Mapping):
        h.update(f"D{len(obj)}".encode())
        for key, value in obj.items():
            h.update(f"K{type(key).__name__}:{key!r}".encode())
            _hash_into(h, value, f"{where}[{key!r}]")
    elif isinstance(obj, (list, tuple)):
        h.update(f"{type(obj).__name__[0]}{len(obj)}".encode())
        for i, value in enumerate(obj):
            _hash_into(h, value, f"{where}[{i}]")
    elif obj is None or isinstance(obj, (bool, int, float, str, bytes, torch.dtype, torch.device)):
        h.update(f"V{type(obj).__name__}:{obj!r}".encode())
    else:
        raise TypeError(f"checkpoint {where} holds a {type(obj).__name__}; only tensors and plain Python values can be stored")


# ------------------------------------------------------------------------------ save / load


def save_checkpoint(directory: str | Path, state: Mapping[str, Any]) -> Path:
    """Write ``state`` as ``directory/latest.pt`` atomically, keeping the old one as ``previous.pt``.

    ``state`` is a dict of tensors and plain Python values. Returns the path of ``latest.pt``.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    payload = dict(state)
    payload["format"] = FORMAT
    payload.pop(_DIGEST_KEY, None)
    payload[_DIGEST_KEY] = content_digest(payload)

    latest, previous = directory / LATEST, directory / PREVIOUS
    tmp = directory / f".{LATEST}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    if latest.exists():
        os.replace(latest, previous)
    os.replace(tmp, latest)
    _fsync_directory(directory)
    for stale in directory.glob(f".{LATEST}.*.tmp"):  # left by processes killed mid-write
        stale.unlink(missing_ok=True)
    return latest


def _fsync_directory(directory: Path) -> None:
    """Make the renames durable (a no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_checkpoint(path: str | Path) -> dict[str, Any]:
    """Load and validate one checkpoint file (tensors on CPU).

    Raises :class:`CheckpointError` naming the file when it is missing, truncated, not a
    checkpoint of this suite, or its content no longer matches its digest.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: checkpoint file not found")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, UnpicklingError, ... for damaged files
        raise CheckpointError(f"{path}: unreadable checkpoint ({type(err).__name__}: {str(err).splitlines()[0][:200]})") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: not a {FORMAT} checkpoint")
    stored = state.pop(_DIGEST_KEY, None)
    actual = content_digest(state)
    if stored != actual:
        raise CheckpointError(f"{path}: checkpoint content does not match its digest (stored {stored}, computed {actual}); the file is corrupt")
    return state


def load_latest(directory: str | Path) -> tuple[dict[str, Any], Path] | None:
    """The newest usable checkpoint in ``directory`` and its path, or ``None`` if there is none.

    A damaged ``latest.pt`` is reported with a warning and ``previous.pt`` is used instead. If
    checkpoint files exist but none is usable, raises :class:`CheckpointError` naming each file
    and what is wrong with it (training must not silently start over).
    """
    directory = Path(directory)
    errors = []
    for name in (LATEST, PREVIOUS):
        path = directory / name
        if not path.exists():
            continue
        try:
            state = read_checkpoint(path)
        except CheckpointError as err:
            errors.append(str(err))
            log.warning("%s; trying the previous checkpoint", err)
            continue
        if errors:
            log.warning("resuming from %s instead", path)
        return state, path
    if errors:
        raise CheckpointError("no usable checkpoint in " + str(directory) + ":\n  " + "\n  ".join(errors))
    return None


def load_module_states(directory: str | Path, modules: Mapping[str, nn.Module]) -> dict[str, Any]:
    """Load the weights saved under ``modules``' names from the newest checkpoint in ``directory``.

    For evaluation and downstream stages: ``modules`` are freshly built networks (e.g. from a
    recipe's ``build``), keyed by the names the training run used (``"G_ema"``, ``"net"``, ...).
    Returns the checkpoint (for its step / images-seen counters).
    """
    found = load_latest(directory)
    if found is None:
        raise CheckpointError(f"{directory}: no checkpoint found (train this model first)")
    state, path = found
    saved = state.get("modules", {})
    for name, module in modules.items():
        if name not in saved:
            raise CheckpointError(f"{path}: has no weights for module {name!r} (it has {sorted(saved)})")
        try:
            module.load_state_dict(saved[name])
        except RuntimeError as err:
            raise CheckpointError(f"{path}: weights of module {name!r} do not fit the network built now: {err}") from None
    return state


# ------------------------------------------------------------------------------- RNG state


def capture_rng_state() -> dict[str, Any]:
    """The global random states of Python, NumPy and torch (CPU, and CUDA when in use)."""
    np_state = np.random.get_state(legacy=False)
    return {
        "python": random.getstate(),
        "numpy": {
            "bit_generator": np_state["bit_generator"],
            "key": torch.from_numpy(np_state["state"]["key"].astype(np.int64)),
            "pos": int(np_state["state"]["pos"]),
            "has_gauss": int(np_state["has_gauss"]),
            "gauss": float(np_state["gauss"]),
        },
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else [],
    }


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    npy = state["numpy"]
    np.random.set_state({
        "bit_generator": npy["bit_generator"],
        "state": {"key": npy["key"].numpy().astype(np.uint32), "pos": npy["pos"]},
        "has_gauss": npy["has_gauss"],
        "gauss": npy["gauss"],
    })
    torch.set_rng_state(state["torch"])
    if state["cuda"]:
        torch.cuda.set_rng_state_all(state["cuda"])


def detach_links(folder: str | Path) -> int:
    """Give every file under ``folder`` that shares its data (a hard link, a symlink) a private
    copy, written beside it and renamed over it, as ``dvc unprotect`` does; returns how many.

    ``.dvc/config`` lets DVC link outputs to its cache (and ``scripts/store.py pull`` links the
    cache to ``store/``), so writing into such a file in place (an appended ``stats.jsonl``, an
    export rewritten by ``torch.save``) would alter the cached, stored object. Every stage that
    writes into a DVC output calls this first; ``dvc repro`` also unprotects persistent outputs."""
    count = 0
    for path in sorted(Path(folder).rglob("*")) if Path(folder).is_dir() else []:
        if not (path.is_symlink() and path.is_file()) and not (path.is_file() and path.stat().st_nlink > 1):
            continue
        tmp = path.with_name(f".{path.name}.{os.getpid()}.detach")
        with open(path, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1 << 22):
                dst.write(chunk)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
        count += 1
    if count:
        log.info("%s: gave %d linked file(s) their own copy before writing", folder, count)
    return count
