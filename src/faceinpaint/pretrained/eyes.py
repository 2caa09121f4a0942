"""Eye positions for measuring how faces are framed: MTCNN's landmarks (Zhang et al. 2016).

The unseen-people test set (:mod:`faceinpaint.unseen`) is framed like the prepared crops by
matching eye positions, and that match is measured with this one detector on both sets. MTCNN's
P-, R- and O-Net weights ship inside the registry package ``facenet-pytorch==2.6.0`` (installed
``--no-deps``: it pins torch < 2.3 and numpy < 2, yet its MTCNN runs on the suite's versions);
each file is checked against its SHA-256 before the networks are built, and nothing downloads.
The O-Net gives five landmarks per face; the first two are the eyes (left and right in the
image).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from .weights import WeightFile, WeightsError, verify_file

_HOW = "pip install --no-deps facenet-pytorch==2.6.0"
MTCNN_WEIGHTS = {
    "pnet": WeightFile("pnet.pt", "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f", _HOW),
    "rnet": WeightFile("rnet.pt", "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86", _HOW),
    "onet": WeightFile("onet.pt", "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d", _HOW),
}
# Side to which every image is resized before detection: crops of 32..256 px and 1024 px
# originals are all seen at one scale, where MTCNN's 12 px P-Net window fits the face well.
DETECTION_SIZE = 256


class EyeDetector:
    """MTCNN (facenet-pytorch) returning the two eye centres of the most confident face.

    :meth:`eyes` takes ``N x H x W x 3`` uint8 images (square or not), resizes each to
    ``detection_size`` on its longer side (bicubic), detects, and maps the eye landmarks back to
    the input's pixel coordinates (x right, y down, pixel centres at half-integers as in PIL).
    Faces not found give NaN rows.
    """

    def __init__(self, detection_size: int = DETECTION_SIZE, device="cpu"):
        try:
            import facenet_pytorch
        except ImportError:
            raise WeightsError(f"the eye detector needs facenet-pytorch; install it with: {_HOW}") from None
        folder = Path(facenet_pytorch.__file__).parent / "data"
        for entry in MTCNN_WEIGHTS.values():
            verify_file(folder / entry.file_name, entry.sha256, entry.how_to_get)
        self.detection_size = int(detection_size)
        self.mtcnn = facenet_pytorch.MTCNN(select_largest=False, post_process=False, device=torch.device(device))

    def eyes(self, images: np.ndarray) -> np.ndarray:
        """``N x 2 x 2``: (left eye, right eye) x (x, y) in input pixels; NaN where no face."""
        images = np.asarray(images)
        if images.ndim != 4 or images.shape[-1] != 3 or images.dtype != np.uint8:
            raise ValueError(f"eyes() expects N x H x W x 3 uint8 images, got {images.shape} {images.dtype}")
        out = np.full((len(images), 2, 2), np.nan)
        for i, image in enumerate(images):
            out[i] = self.eyes_of(Image.fromarray(image))
        return out

    def eyes_of(self, image: Image.Image) -> np.ndarray:
        """``2 x 2`` eye positions in ``image``'s pixels (NaN if no face)."""
        w, h = image.size
        scale = self.detection_size / max(w, h)
        size = (max(1, round(w * scale)), max(1, round(h * scale)))
        resized = image.convert("RGB").resize(size, Image.BICUBIC)
        with torch.no_grad():
            _, probs, landmarks = self.mtcnn.detect(resized, landmarks=True)
        if landmarks is None or len(landmarks) == 0:
            return np.full((2, 2), np.nan)
        best = int(np.argmax(np.asarray(probs, dtype=np.float64)))
        # MTCNN's landmark coordinates are continuous pixel coordinates of the resized image
        # (origin at its top-left corner); map back through the per-axis scale factors.
        eyes = np.asarray(landmarks[best][:2], dtype=np.float64)
        return eyes * np.array([w / size[0], h / size[1]])
