"""The suite's benchmark as files, for any method: export the test inputs and masks, read back a
folder of a method's predictions for them (PAPER.md sec. 6; the protocol of
:mod:`faceinpaint.evaluate`, which scores them).

Benchmark folder (``faceinpaint benchmark export DIR``; the ``benchmark`` stage writes
``artifacts/benchmark/``)
------------------------------------------------------------------------------------------

For every test set (:data:`TEST_SETS`) and mask set (:data:`faceinpaint.metrics.MASK_SETS`), in
evaluation order, one file name ``<test_set>/<mask_set>/<image>_m<mask>.png`` (image: row of the
prepared test array, 5 digits; mask: square 0-9 or the irregular mask's file number, 5 digits)
under each of

``inputs/``    8-bit RGB PNG: the masked input, the original's known pixels and 128 in the hole
               (the suite's ``image * (1 - mask)`` in [-1, 1], written as uint8);
``masks/``     8-bit grey PNG: 255 = hole (to fill), 0 = known (:data:`MASK_CONVENTION`);
``originals/`` 8-bit RGB PNG: the ground truth, kept apart so a method need never open it;

and ``manifest.json`` (:func:`build_manifest`): the suite's version, the params that define the
sets, the conventions, and per file its ids, hole fraction, area bin and the sha256 of its
input, mask and original. Every byte follows from the prepared data and the params: exporting
twice gives the same bytes.

Predictions folder (what ``faceinpaint evaluate --predictions DIR`` reads)
---------------------------------------------------------------------------

``DIR/manifest.json``: a copy of the benchmark's manifest the method ran on (it pairs every
prediction with its ground truth and is checked against this suite's); and for every manifest
file name one prediction, either that name (``.png``: 8-bit RGB, the resolution of the manifest)
or its ``.npy`` twin (float32 ``H x W x 3`` in [-1, 1], the suite's own tensor range, lossless).
Nothing else. :func:`read_predictions` checks all of it before anything is scored.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from . import __version__
from .config import Config
from .data import EvaluationDataset, PreparedData, to_tensor_image, to_uint8_image
from .metrics import MASK_SETS, area_bin
from .pretrained.weights import sha256_of

BENCHMARK_DIR = Path("artifacts/benchmark")
MANIFEST = "manifest.json"
FORMAT = "faceinpaint-benchmark/1"
# the test sets of every evaluation: name -> the prepared split it reads (one for now)
TEST_SETS: dict[str, str] = {"test": "test"}
MASK_CONVENTION = "masks/*.png: 8-bit grey, 255 = hole (to fill), 0 = known; same name as the input"
INPUT_CONVENTION = ("inputs/*.png: 8-bit RGB, the original's known pixels, 128 in the hole (the suite's "
                    "image * (1 - mask) in [-1, 1] written as uint8); the hole's values carry no information")
PREDICTION_FORMAT = ("DIR/<file>: 8-bit RGB PNG of the manifest's resolution, or DIR/<file stem>.npy: float32 "
                     "H x W x 3 in [-1, 1]; plus DIR/manifest.json, a copy of this manifest. Known pixels are "
                     "replaced by the originals' before scoring (how much they changed is reported)")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_COLOUR_TYPES = {0: "greyscale (1 channel)", 2: "RGB (3 channels)", 3: "palette", 4: "greyscale + alpha (2 channels)",
                    6: "RGBA (4 channels)"}


class BenchmarkError(ValueError):
    """A benchmark or predictions folder is not what the suite expects; the message names the file."""


def evaluation_sets(cfg: Config, prepared: PreparedData, test_set: str = "test") -> tuple[dict[str, EvaluationDataset], list[int]]:
    """The two mask sets of a test set, in evaluation order: ``square`` (test image ``i`` with
    square ``i % 10``, the first ``evaluate.max_test_images`` images) and ``irregular`` (every
    irregular evaluation mask with its test image); plus the file number of each irregular mask
    (its ``mask_id`` in the per-image rows)."""
    if test_set not in TEST_SETS:
        raise ValueError(f"unknown test set {test_set!r}; expected one of {', '.join(TEST_SETS)}")
    test = prepared.images(TEST_SETS[test_set])
    squares = EvaluationDataset.squares(test, prepared.square_masks(), cfg.evaluate.max_test_images)
    irregular_masks, irregular_rows = prepared.irregular_eval()
    mask_files = irregular_rows["file"].str.slice(0, 5).astype(int).tolist()
    return {"square": squares, "irregular": EvaluationDataset.irregular(test, irregular_masks)}, mask_files


def _png(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG", compress_level=6)
    return buf.getvalue()


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def file_name(test_set: str, mask_set: str, image: int, mask_id: int) -> str:
    return f"{test_set}/{mask_set}/{image:05d}_m{mask_id:05d}.png"


def defining_params(cfg: Config) -> dict:
    """The params that define the benchmark's images and masks (as in ``params.yaml``; those of
    the training images and masks left out)."""
    flat = cfg.as_flat_dict()
    keys = ("profile", "resolution", "evaluate.max_test_images", "evaluate.irregular_per_bin")
    out = {k: flat[k] for k in keys}
    out.update({k: v for k, v in flat.items() if k.split(".")[0] in ("data", "masks")
                and "train" not in k and not k.startswith("masks.square_")})
    return json.loads(json.dumps(out))


def benchmark_files(cfg: Config, prepared: PreparedData):
    """``(entry, {"inputs": png, "masks": png, "originals": png})`` of every benchmark file, in
    manifest order (test set, mask set, evaluation order)."""
    for test_set in TEST_SETS:
        sets, mask_files = evaluation_sets(cfg, prepared, test_set)
        for mask_set in MASK_SETS:
            dataset = sets[mask_set]
            for k in range(len(dataset)):
                item = dataset[k]
                image, mask = item["image"][None], item["mask"][None]
                mask_id = int(item["mask_id"]) if mask_set == "square" else mask_files[int(item["mask_id"])]
                fraction = float(mask.reshape(1, -1).double().mean(dim=1)[0])  # as MetricSuite computes it
                blobs = {
                    "inputs": _png(to_uint8_image(image * (1 - mask))[0]),
                    "masks": _png((mask[0, 0] > 0.5).numpy().astype(np.uint8) * 255),
                    "originals": _png(to_uint8_image(image)[0]),
                }
                entry = {"file": file_name(test_set, mask_set, int(item["index"]), mask_id), "test_set": test_set,
                         "mask_set": mask_set, "position": k, "image_id": str(int(item["index"])), "mask_id": mask_id,
                         "hole_fraction": fraction, "area_bin": area_bin(fraction),
                         "sha256": {name: _sha(b) for name, b in blobs.items()}}
                yield entry, blobs


def build_manifest(cfg: Config, prepared: PreparedData, entries: list[dict]) -> dict:
    counts: dict[str, int] = {}
    for e in entries:
        counts[f"{e['test_set']}/{e['mask_set']}"] = counts.get(f"{e['test_set']}/{e['mask_set']}", 0) + 1
    return {
        "format": FORMAT,
        "suite_version": __version__,
        "resolution": cfg.resolution,
        "params": defining_params(cfg),
        "prepared": {"test_images_sha256": sha256_of(prepared.root / "test_images.npy"),
                     "square_boxes": [list(b) for b in prepared.info()["square_boxes"]]},
        "mask_convention": MASK_CONVENTION,
        "input_convention": INPUT_CONVENTION,
        "prediction_format": PREDICTION_FORMAT,
        "sets": counts,
        "files": entries,
    }


def expected_manifest(cfg: Config, prepared: PreparedData) -> dict:
    """The manifest this suite's benchmark has under ``cfg`` (what an export writes)."""
    return build_manifest(cfg, prepared, [entry for entry, _ in benchmark_files(cfg, prepared)])


def _manifest_bytes(manifest: dict) -> bytes:
    return (json.dumps(manifest, indent=1, sort_keys=True) + "\n").encode()


def export(cfg: Config, out_dir: str | Path, prepared: PreparedData) -> dict:
    """Write the benchmark folder (module docstring) to ``out_dir``, replacing it whole: written
    next to it first and moved into place, so a reader never sees half an export. Returns the
    manifest."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(f".{out_dir.name}.tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    entries = []
    for entry, blobs in benchmark_files(cfg, prepared):
        for kind, data in blobs.items():
            path = tmp / kind / entry["file"]
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)
        entries.append(entry)
    manifest = build_manifest(cfg, prepared, entries)
    (tmp / MANIFEST).write_bytes(_manifest_bytes(manifest))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    os.replace(tmp, out_dir)
    return manifest


# ------------------------------------------------------------------------- reading predictions


def _png_header(data: bytes) -> tuple[int, int, int, int] | None:
    """(width, height, bit depth, colour type) from a PNG's IHDR chunk; None if not a PNG."""
    if len(data) < 33 or not data.startswith(PNG_SIGNATURE) or data[12:16] != b"IHDR":
        return None
    width, height, depth, colour = struct.unpack(">IIBB", data[16:26])
    return width, height, depth, colour


@dataclass
class Predictions:
    """A checked predictions folder: per ``(test_set, mask_set)`` the predictions in evaluation
    order as ``N x 3 x H x W`` float32 in [-1, 1] (``to_tensor_image`` of the PNGs, or the
    ``.npy`` arrays as they are), channels-last (:meth:`batch`)."""

    folder: Path
    kind: str  # "png" or "npy"
    tensors: dict[tuple[str, str], torch.Tensor]
    manifest_sha256: str

    def batch(self, test_set: str, mask_set: str, positions) -> torch.Tensor:
        """The raw predictions at ``positions`` (a range, or any sequence), ``N x 3 x H x W`` in
        the channels-last memory layout of an ``N x H x W x 3`` array: the layout an image
        library's arrays have, and that of the classical fill's output (the networks' float32
        rounding depends on the layout, so a registered model's composites read back from files
        score bit for bit as in its own evaluation)."""
        stored = self.tensors[(test_set, mask_set)]
        if isinstance(positions, range) and positions.step == 1:
            return stored[positions.start:positions.stop]
        return stored[list(positions)].contiguous(memory_format=torch.channels_last)

    def composite(self, test_set: str, mask_set: str, positions, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The predictions at ``positions`` with the known pixels replaced by the suite's own
        (``image * (1 - mask)``, exactly what every model's composite keeps)."""
        pred = self.batch(test_set, mask_set, positions).to(image.device)
        return torch.where(mask > 0.5, pred, image * (1 - mask))

    def known_change(self, test_set: str, mask_set: str, positions, image: torch.Tensor, mask: torch.Tensor) -> tuple[int, int, float, float]:
        """(changed known values, known values, sum of |change| on the [0, 1] scale, max |change|)
        of the raw predictions at ``positions`` against the originals' known pixels."""
        pred = self.batch(test_set, mask_set, positions).to(image.device)
        known = (mask <= 0.5).expand_as(image)
        if self.kind == "png":  # compare on the uint8 grid the PNG lives on
            diff = (torch.from_numpy(to_uint8_image(pred).astype(np.int16))
                    - torch.from_numpy(to_uint8_image(image).astype(np.int16))).abs().double() / 255.0
            diff = diff.permute(0, 3, 1, 2)
        else:
            diff = (pred.double() - image.double()).abs() / 2.0
        diff = diff[known.cpu()]
        return int((diff > 0).sum()), int(diff.numel()), float(diff.sum()), float(diff.max()) if diff.numel() else 0.0


def _first(names: list[str], k: int = 5) -> str:
    return ", ".join(names[:k]) + (", ..." if len(names) > k else "")


def check_manifest(found: dict, expected: dict, where: Path) -> None:
    """Raise :class:`BenchmarkError` naming the first key where ``found`` is not ``expected``."""
    for key in ("format", "suite_version", "resolution", "params", "prepared", "sets"):
        if found.get(key) != expected[key]:
            raise BenchmarkError(f"{where}: {key} is {found.get(key)!r}, this suite's benchmark has {expected[key]!r}: "
                                 "the predictions were made for another suite version or set; re-export "
                                 "(`faceinpaint benchmark export`) and rerun the method")
    for a, b in zip(found.get("files", []), expected["files"]):
        if a != b:
            raise BenchmarkError(f"{where}: entry {a.get('file')!r} is not this suite's {b['file']!r} "
                                 f"({', '.join(k for k in b if a.get(k) != b[k])} differ); re-export and rerun the method")
    if len(found.get("files", [])) != len(expected["files"]):
        raise BenchmarkError(f"{where}: {len(found.get('files', []))} files, this suite's benchmark has {len(expected['files'])}")


def _read_png(path: Path, res: int) -> np.ndarray:
    data = path.read_bytes()
    header = _png_header(data)
    if header is None:
        raise BenchmarkError(f"{path}: not a PNG image (expected an 8-bit RGB PNG of {res}x{res})")
    width, height, depth, colour = header
    if (width, height) != (res, res):
        raise BenchmarkError(f"{path}: {width}x{height}, expected {res}x{res} (the benchmark's resolution)")
    if colour != 2:
        raise BenchmarkError(f"{path}: colour type {PNG_COLOUR_TYPES.get(colour, colour)}, expected RGB (3 channels, no alpha)")
    if depth != 8:
        raise BenchmarkError(f"{path}: bit depth {depth}, expected 8 bits per channel")
    try:
        with Image.open(io.BytesIO(data)) as im:
            array = np.asarray(im.convert("RGB") if im.mode != "RGB" else im, dtype=np.uint8).copy()
    except Exception as err:  # noqa: BLE001 - a damaged file, whatever the decoder says
        raise BenchmarkError(f"{path}: cannot be decoded as a PNG image ({err})") from None
    return array


def _read_npy(path: Path, res: int) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001
        raise BenchmarkError(f"{path}: not a .npy array ({err}); expected float32 {res} x {res} x 3 in [-1, 1]") from None
    if array.dtype != np.float32 or array.shape != (res, res, 3):
        raise BenchmarkError(f"{path}: {array.dtype} array of shape {array.shape}, expected float32 {res} x {res} x 3 in [-1, 1]")
    if not np.isfinite(array).all():
        raise BenchmarkError(f"{path}: contains inf or nan, expected finite values in [-1, 1]")
    return array


def read_predictions(folder: str | Path, expected: dict) -> Predictions:
    """Check a predictions folder (module docstring) against the manifest ``expected``
    (:func:`expected_manifest`) and read it; any deviation raises :class:`BenchmarkError` naming
    the file and what was expected. Nothing is scored or written here."""
    folder = Path(folder)
    if not folder.is_dir():
        raise BenchmarkError(f"{folder}: no such predictions folder")
    manifest_path = folder / MANIFEST
    if not manifest_path.is_file():
        raise BenchmarkError(f"{manifest_path}: missing; copy the manifest.json of the benchmark export the method ran on")
    try:
        found = json.loads(manifest_path.read_text())
    except (ValueError, UnicodeDecodeError) as err:
        raise BenchmarkError(f"{manifest_path}: not a JSON manifest ({err})") from None
    if not isinstance(found, dict):
        raise BenchmarkError(f"{manifest_path}: not a benchmark manifest (a JSON object expected)")
    check_manifest(found, expected, manifest_path)

    present = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file() or p.is_symlink())
    present = [p for p in present if p != MANIFEST]
    names = [e["file"] for e in expected["files"]]
    stems = {n[:-len(".png")] for n in names}
    kinds = {"png" if p.endswith(".png") else "npy" for p in present if p.rsplit(".", 1)[0] in stems}
    extra = [p for p in present if p.rsplit(".", 1)[0] not in stems or not p.endswith((".png", ".npy"))]
    if extra:
        raise BenchmarkError(f"{folder}: {len(extra)} files that are not predictions of the manifest: {_first(extra)} "
                             "(expected only <file>.png or <file stem>.npy for the manifest's files, and manifest.json)")
    if len(kinds) > 1:
        raise BenchmarkError(f"{folder}: both .png and .npy predictions; use one format for the whole folder")
    kind = kinds.pop() if kinds else "png"
    wanted = names if kind == "png" else [n[:-len(".png")] + ".npy" for n in names]
    have = set(present)
    missing = [n for n in wanted if n not in have]
    if missing:
        raise BenchmarkError(f"{folder}: {len(missing)} of {len(wanted)} predictions missing: {_first(missing)}")

    res = int(expected["resolution"])
    arrays: dict[tuple[str, str], list] = {}
    for entry, name in zip(expected["files"], wanted):
        path = folder / name
        array = _read_png(path, res) if kind == "png" else _read_npy(path, res)
        arrays.setdefault((entry["test_set"], entry["mask_set"]), []).append(array)
    tensors = {
        key: to_tensor_image(np.stack(a)) if kind == "png" else torch.from_numpy(np.stack(a)).movedim(-1, -3)  # channels-last
        for key, a in arrays.items()
    }
    return Predictions(folder, kind, tensors, sha256_of(manifest_path))
