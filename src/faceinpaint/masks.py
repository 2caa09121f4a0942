"""Hole masks: the paper's ten fixed squares, random training squares, NVIDIA irregular masks.

Convention (docs/CONVENTIONS.md): hole = 1, known = 0. Mask files: white (>= 128) = hole.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

# Centres of the ten evaluation squares, as fractions (x, y) of the prepared face crop.
# They sit on the face region of the default crop (eyes at y ~ 0.40, mouth at y ~ 0.72).
SQUARE_CENTRES: tuple[tuple[float, float], ...] = (
    (0.36, 0.40),  # 0 left eye
    (0.64, 0.40),  # 1 right eye
    (0.50, 0.55),  # 2 nose
    (0.50, 0.72),  # 3 mouth
    (0.50, 0.25),  # 4 forehead
    (0.30, 0.62),  # 5 left cheek
    (0.70, 0.62),  # 6 right cheek
    (0.50, 0.42),  # 7 between the eyes
    (0.50, 0.86),  # 8 chin
    (0.42, 0.58),  # 9 nose and left cheek
)
N_SQUARES = len(SQUARE_CENTRES)


class MaskError(ValueError):
    """A mask file or array is not what the suite expects; the message names it."""


def square_boxes(resolution: int, min_frac: float = 0.125, max_frac: float = 0.25) -> list[tuple[int, int, int, int]]:
    """The ten fixed evaluation squares (PAPER.md sec. 6, 6a) as (x0, y0, x1, y1), x1/y1 exclusive.

    Square k has side ``round(resolution * (min_frac + k/9 * (max_frac - min_frac)))``, so sides
    run from 1/8 to 1/4 of the image side (1.6% to 6.3% of the area), centred on
    ``SQUARE_CENTRES[k]`` and clipped inside the image. Test image i uses square ``i % 10``.
    """
    boxes = []
    for k, (cx, cy) in enumerate(SQUARE_CENTRES):
        frac = min_frac + (max_frac - min_frac) * k / (N_SQUARES - 1)
        side = max(1, round(resolution * frac))
        x0 = min(max(0, round(cx * resolution - side / 2)), resolution - side)
        y0 = min(max(0, round(cy * resolution - side / 2)), resolution - side)
        boxes.append((x0, y0, x0 + side, y0 + side))
    return boxes


def box_mask(resolution: int, box: tuple[int, int, int, int]) -> np.ndarray:
    mask = np.zeros((resolution, resolution), np.uint8)
    x0, y0, x1, y1 = box
    mask[y0:y1, x0:x1] = 1
    return mask


def square_masks(resolution: int, min_frac: float = 0.125, max_frac: float = 0.25) -> np.ndarray:
    """``10 x R x R`` uint8 array of the evaluation squares (hole = 1)."""
    return np.stack([box_mask(resolution, b) for b in square_boxes(resolution, min_frac, max_frac)])


def random_square(rng: np.random.Generator, resolution: int, min_frac: float, max_frac: float) -> np.ndarray:
    """A training square: side uniform in [min_frac, max_frac] of the side, anywhere in the image."""
    side = int(rng.integers(max(1, round(resolution * min_frac)), max(1, round(resolution * max_frac)) + 1))
    x0 = int(rng.integers(0, resolution - side + 1))
    y0 = int(rng.integers(0, resolution - side + 1))
    return box_mask(resolution, (x0, y0, x0 + side, y0 + side))


def load_mask_file(path: str | Path, resolution: int | None = None, threshold: int = 128) -> np.ndarray:
    """Read a mask image (white = hole) as an ``H x W`` uint8 0/1 array.

    With ``resolution`` set, the file is resized by area averaging and thresholded at one half,
    which keeps the hole area of the original. Raises :class:`MaskError` naming the file when
    it cannot be read, is not square when resizing, or has no hole at all.
    """
    path = Path(path)
    try:
        with Image.open(path) as im:
            im.load()
            grey = np.asarray(im.convert("L"), np.float32)
    except (OSError, ValueError) as err:
        raise MaskError(f"{path}: cannot read mask image ({err})") from None
    if resolution is not None and grey.shape != (resolution, resolution):
        if grey.shape[0] != grey.shape[1]:
            raise MaskError(f"{path}: mask is {grey.shape[1]}x{grey.shape[0]}, expected a square image")
        hole = (grey >= threshold).astype(np.float32)
        small = np.asarray(Image.fromarray(hole).resize((resolution, resolution), Image.BOX), np.float32)
        mask = (small >= 0.5).astype(np.uint8)
    else:
        mask = (grey >= threshold).astype(np.uint8)
    return mask


def validate_mask_array(mask: np.ndarray, expected_hw: tuple[int, int], name: str) -> np.ndarray:
    """Check a user mask: right size, binary after thresholding, with a hole. Returns 0/1 uint8."""
    if mask.shape != expected_hw:
        raise MaskError(f"{name}: mask is {mask.shape[1]}x{mask.shape[0]}, expected {expected_hw[1]}x{expected_hw[0]} (the image's size)")
    if not mask.any():
        raise MaskError(f"{name}: mask has no hole (expected white = hole pixels somewhere)")
    if mask.all():
        raise MaskError(f"{name}: mask is all hole (expected some known, black pixels)")
    return mask


def irregular_bin_indices(n_bins: int, per_bin_file: int, take: int, start: int, stop: int) -> list[list[int]]:
    """File indices of ``take`` masks from each area bin, spread evenly over positions
    ``[start, stop)`` inside the bin (the source files are stored in bin order, ``per_bin_file``
    to a bin). Evaluation uses the first half of every bin, training the second half."""
    if not 0 <= start < stop <= per_bin_file or take > stop - start:
        raise MaskError(f"cannot take {take} masks from positions [{start}, {stop}) of bins of {per_bin_file}")
    step = (stop - start) // take
    return [[b * per_bin_file + start + i * step for i in range(take)] for b in range(n_bins)]
