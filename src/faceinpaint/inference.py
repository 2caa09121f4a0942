"""Inpaint a user's image with a user's mask (``faceinpaint inpaint IMAGE MASK --model M -o OUT``).

The image must be a square face crop (like the prepared ones); any size works: the model runs
at the profile's resolution (64x64 for ``cpu``) and its hole pixels are upsampled back, while
every known pixel of the output is the user's own pixel, untouched. :func:`resolution_notes`
says so for each photo, and warns when the fill is enlarged more than twice. The mask is a greyscale image of the same size,
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
    except (OSError, ValueError, Image.DecompressionBombError) as err:
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
def inpaint_array(cfg: Config, image: np.ndarray, mask: np.ndarray, model: str, device: str = "cpu") -> np.ndarray:
    """``H x W x 3`` uint8 image, ``H x W`` 0/1 mask -> inpainted ``H x W x 3`` uint8 (the model runs on ``device``)."""
    inpaint = load_inpainter(cfg, model, device)
    res = cfg.resolution
    x = to_tensor_image(image)[None]
    m = torch.from_numpy(mask).float()[None, None]
    if x.shape[-1] != res:
        x_small = F.interpolate(x, size=(res, res), mode="bilinear", antialias=True, align_corners=False)
        m_small = (F.adaptive_max_pool2d(m, (res, res)) > 0).float()  # any hole pixel makes a hole cell
    else:
        x_small, m_small = x, m
    x_small, m_small = x_small.to(device), m_small.to(device)
    out = inpaint(x_small * (1 - m_small), m_small)["composite"].cpu()
    if out.shape[-1] != x.shape[-1]:
        out = F.interpolate(out, size=x.shape[-2:], mode="bilinear", align_corners=False)
    result = to_uint8_image(out)[0]
    # known pixels are the user's own, bit for bit
    return np.where(mask[..., None] > 0, result, image)


# A fill enlarged more than this many times (photo side / model resolution) is warned about.
MAX_ENLARGEMENT = 2.0


def resolution_notes(resolution: int, model: str, mask: np.ndarray) -> tuple[str, str | None]:
    """What happens to a ``side x side`` photo with ``mask`` (``H x W``, 1 = hole) under a model
    that works at ``resolution``: the note, and a warning when the hole is filled from far fewer
    pixels than it covers (the fill enlarged more than :data:`MAX_ENLARGEMENT` times), else None."""
    side = mask.shape[0]
    if side == resolution:
        note = f"{model} works at {resolution}x{resolution}: the {side}x{side} face crop is filled at its own size"
    else:
        note = (f"{model} works at {resolution}x{resolution}: the {side}x{side} face crop is resized to "
                f"{resolution}x{resolution}, filled there, the fill resized back ({side / resolution:.2g}x) and only "
                f"the hole's pixels pasted in; every other pixel is the photo's own")
    ys, xs = np.nonzero(mask)
    scale = side / resolution
    if len(ys) == 0 or scale <= MAX_ENLARGEMENT:
        return note, None
    h, w = int(ys.max() - ys.min() + 1), int(xs.max() - xs.min() + 1)
    warning = (f"the hole ({w}x{h} px of the photo) is filled from about {max(1, round(w / scale))}x"
               f"{max(1, round(h / scale))} pixels of the model's {resolution}x{resolution} image, enlarged "
               f"{scale:.2g}x: expect a blurred fill without fine detail (eyes, teeth); crop the photo closer to "
               f"the face, or use a model trained at a higher resolution (the `paper` profile: 256x256)")
    return note, warning


def inpaint_file(cfg: Config, image_path: str, mask_path: str, model: str, output: str, device: str = "cpu",
                 notes: list | None = None) -> Path:
    """Inpaint ``image_path`` where ``mask_path`` is white and write ``output`` (a PNG unless its
    suffix names another format). ``notes``, if given, receives :func:`resolution_notes`'s note and
    warning (``faceinpaint inpaint`` and the demo page show them)."""
    image = _read(image_path, "image", "RGB")
    h, w = image.shape[:2]
    if h != w:
        raise InpaintError(f"{image_path}: image is {w}x{h}, expected a square face crop")
    mask = read_mask(mask_path, (h, w))
    if notes is not None:
        notes.extend(n for n in resolution_notes(cfg.resolution, model, mask) if n)
    try:
        result = inpaint_array(cfg, image, mask, model, device)
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
