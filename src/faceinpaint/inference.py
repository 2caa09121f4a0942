"""Inpaint a user's image with a user's mask (``faceinpaint inpaint IMAGE MASK --model M -o OUT``).

The image must be a square face crop (like the prepared ones); any size works: the model runs
at the profile's resolution and its hole pixels are upsampled back, while every known pixel of
the output is the user's own pixel, untouched. The mask is a greyscale image of the same size,
white (>= 128) = hole; pixels strictly between 32 and 223 are neither black nor white and make
the mask invalid (a soft or anti-aliased mask is refused rather than guessed at).
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from .config import Config
from .data import to_tensor_image, to_uint8_image
from .masks import MaskError, validate_mask_array
from .recipes import ModelMissingError, load_inpainter

AMBIGUOUS = (32, 223)


class InpaintError(ValueError):
    """Bad input for the inpaint command; the message names the file and what was expected."""


def _read(path: str | Path, what: str, mode: str) -> np.ndarray:
    path = Path(path)
    if path.is_dir():
        raise InpaintError(f"{path}: is a directory, expected an {what} file")
    if not path.is_file():
        raise InpaintError(f"{path}: {what} file not found")
    try:
        with Image.open(path) as im:
            im.load()
            return np.asarray(im.convert(mode))
    except (OSError, ValueError) as err:
        raise InpaintError(f"{path}: not a readable {what} ({err})") from None


def read_mask(path: str | Path, expected_hw: tuple[int, int]) -> np.ndarray:
    grey = _read(path, "mask image", "L")
    ambiguous = int(((grey > AMBIGUOUS[0]) & (grey < AMBIGUOUS[1])).sum())
    if ambiguous:
        raise InpaintError(f"{path}: mask must be black (known) and white (hole); {ambiguous} pixels have grey "
                           f"values between {AMBIGUOUS[0]} and {AMBIGUOUS[1]}")
    try:
        return validate_mask_array((grey >= 128).astype(np.uint8), expected_hw, str(path))
    except MaskError as err:
        raise InpaintError(str(err)) from None


@torch.no_grad()
def inpaint_array(cfg: Config, image: np.ndarray, mask: np.ndarray, model: str) -> np.ndarray:
    """``H x W x 3`` uint8 image, ``H x W`` 0/1 mask -> inpainted ``H x W x 3`` uint8."""
    inpaint = load_inpainter(cfg, model)
    res = cfg.resolution
    x = to_tensor_image(image)[None]
    m = torch.from_numpy(mask).float()[None, None]
    if x.shape[-1] != res:
        x_small = F.interpolate(x, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
        m_small = (F.adaptive_max_pool2d(m, (res, res)) > 0).float()  # any hole pixel makes a hole cell
    else:
        x_small, m_small = x, m
    out = inpaint(x_small * (1 - m_small), m_small)["composite"]
    if out.shape[-1] != x.shape[-1]:
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    result = to_uint8_image(out)[0]
    # known pixels are the user's own, bit for bit
    return np.where(mask[..., None] > 0, result, image)


def inpaint_file(cfg: Config, image_path: str, mask_path: str, model: str, output: str) -> Path:
    image = _read(image_path, "image", "RGB")
    h, w = image.shape[:2]
    if h != w:
        raise InpaintError(f"{image_path}: image is {w}x{h}, expected a square face crop")
    mask = read_mask(mask_path, (h, w))
    try:
        result = inpaint_array(cfg, image, mask, model)
    except ModelMissingError as err:
        raise InpaintError(str(err)) from None
    out = Path(output)
    if out.is_dir():
        raise InpaintError(f"{out}: is a directory, expected an output file name")
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=out.suffix or ".png")
    os.close(fd)
    try:
        Image.fromarray(result).save(tmp, format=None if out.suffix else "PNG")
        os.replace(tmp, out)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out
