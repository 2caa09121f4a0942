"""``faceinpaint demo``: a local web page to try the models on a face (loopback by default).

Open a photo (a square face crop, any size) or pick a prepared test face, paint the hole with a
brush (size slider, undo, clear), tick one or several models (the classical biharmonic fill
among them) and see each result beside the original, with a download link for each and for the
painted mask. The page (``demo.html`` beside this module) binarises the painted mask (white =
hole) at the photo's own size before sending it.

Each result is made by :func:`faceinpaint.inference.inpaint_file` on the uploaded bytes, the
function ``faceinpaint inpaint`` calls, and written as the same PNG: the page's image equals the
command's output for that image, mask and model, byte for byte (``tests/test_demo.py``). Bad
input (a file that is not an image, a soft mask) and a model that is not trained give a message
on the page; the server goes on serving. The model's resolution and how a larger photo is
handled come with every result (:func:`faceinpaint.inference.resolution_notes`).

Like ``faceinpaint ui``, the server binds to 127.0.0.1 unless remote access is asked for: it
has no authentication.
"""

from __future__ import annotations

import asyncio
import base64
import io
import logging
import tempfile
from pathlib import Path

import numpy as np

from .config import Config
from .models import INPAINTERS, MODELS, upstream_chain

PAGE = Path(__file__).with_name("demo.html")
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
MAX_UPLOAD = 32 * 2**20  # bytes per request (a photo and its mask)

log = logging.getLogger(__name__)


class DemoError(ValueError):
    """The demo cannot be served as asked; the message says why."""


def model_list(cfg: Config) -> list[dict]:
    """Every inpainter of the registry, with whether its trained file is in the workspace."""
    from .recipes import MODELS_DIR

    out = []
    for name in INPAINTERS:
        entry = MODELS[name]
        upstream = ([name] if entry.trains else []) + [u for u in upstream_chain(name) if MODELS[u].trains]
        missing = [str(MODELS_DIR / m / MODELS[m].export_file) for m in upstream
                   if not (MODELS_DIR / m / MODELS[m].export_file).is_file()]
        out.append({"name": name, "display": entry.display, "trained": not missing,
                    "missing": missing})
    return out


def test_face_png(index: int, prepared: Path) -> bytes:
    """Prepared test image ``index`` as a PNG (:class:`DemoError` if there is none)."""
    from PIL import Image

    path = prepared / "test_images.npy"
    if not path.is_file():
        raise DemoError(f"{path}: no prepared test faces (run `dvc repro prepare` or `python scripts/store.py pull`)")
    images = np.load(path, mmap_mode="r")
    if not 0 <= index < len(images):
        raise DemoError(f"test face {index}: expected 0..{len(images) - 1}")
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(images[index])).save(buf, format="PNG")
    return buf.getvalue()


def run_models(cfg: Config, image: bytes, mask: bytes, models: list[str], device: str = "cpu") -> dict:
    """Inpaint the uploaded ``image`` bytes where the ``mask`` PNG is white with each of
    ``models``, through :func:`faceinpaint.inference.inpaint_file`. Returns ``{"notes": [...],
    "warnings": [...], "results": [{"model", "display", "png" (base64) | "error"}]}``; raises
    :class:`faceinpaint.inference.InpaintError` for an image or mask that cannot be used."""
    from .inference import InpaintError, inpaint_file

    if not models:
        raise InpaintError("no model chosen: tick at least one")
    unknown = [m for m in models if m not in INPAINTERS]
    if unknown:
        raise InpaintError(f"unknown model {', '.join(unknown)}; expected one of {', '.join(INPAINTERS)}")
    notes: list[str] = []
    warnings: list[str] = []
    results = []
    with tempfile.TemporaryDirectory(prefix="faceinpaint-demo-") as tmp:
        image_path, mask_path = Path(tmp) / "photo", Path(tmp) / "mask.png"
        image_path.write_bytes(image)
        mask_path.write_bytes(mask)
        for name in models:
            out = Path(tmp) / f"{name}.png"
            model_notes: list[str] = []
            try:
                inpaint_file(cfg, str(image_path), str(mask_path), name, str(out), device, notes=model_notes)
            except InpaintError as err:
                message = str(err).replace(str(image_path), "the photo").replace(str(mask_path), "the mask")
                if not model_notes:  # the photo or the mask itself is unusable: no model can run
                    raise InpaintError(message) from None
                results.append({"model": name, "display": MODELS[name].display, "error": message})
            else:
                results.append({"model": name, "display": MODELS[name].display,
                                "png": base64.b64encode(out.read_bytes()).decode()})
            notes += [n for n in model_notes[:1] if n not in notes]
            warnings += [n for n in model_notes[1:] if n not in warnings]
    return {"notes": notes, "warnings": warnings, "results": results}


def make_app(cfg: Config, device: str = "cpu", prepared: Path = Path("artifacts/prepared")):
    """The aiohttp application: the page, the model list, the test faces and the inpainting."""
    from aiohttp import web

    from .inference import InpaintError

    lock = asyncio.Lock()  # one inpainting at a time: the models share the machine's cores

    async def page(_request):
        return web.FileResponse(PAGE, headers={"Cache-Control": "no-store"})

    async def models(_request):
        faces = prepared / "test_images.npy"
        count = int(np.load(faces, mmap_mode="r").shape[0]) if faces.is_file() else 0
        return web.json_response({"profile": cfg.profile_name, "resolution": cfg.resolution,
                                  "models": model_list(cfg), "test_faces": count})

    async def face(request):
        try:
            return web.Response(body=test_face_png(int(request.match_info["index"]), prepared), content_type="image/png")
        except (DemoError, ValueError) as err:
            return web.json_response({"error": str(err)}, status=404)

    async def inpaint(request):
        fields: dict[str, bytes] = {}
        chosen: list[str] = []
        try:
            form = await request.post()
        except ValueError as err:  # aiohttp: request body over client_max_size
            return web.json_response({"error": f"upload refused: {err}"}, status=413)
        for key in ("image", "mask"):
            item = form.get(key)
            if item is None or not hasattr(item, "file"):
                return web.json_response({"error": f"no {key} uploaded"}, status=400)
            fields[key] = item.file.read()
        chosen = [str(m) for m in form.getall("model", [])]
        async with lock:
            try:
                result = await asyncio.get_running_loop().run_in_executor(
                    None, run_models, cfg, fields["image"], fields["mask"], chosen, device)
            except InpaintError as err:
                return web.json_response({"error": str(err)}, status=400)
        return web.json_response(result)

    app = web.Application(client_max_size=MAX_UPLOAD)
    app.add_routes([web.get("/", page), web.get("/api/models", models), web.get(r"/api/face/{index:\d+}", face),
                    web.post("/api/inpaint", inpaint)])
    return app


def serve(cfg: Config, host: str = "127.0.0.1", port: int = 8000, allow_remote: bool = False, device: str = "cpu") -> None:
    """Serve the demo page in the foreground until Ctrl-C."""
    from aiohttp import web

    if host not in LOOPBACK_HOSTS and not allow_remote:
        raise DemoError(f"refusing to serve the demo on {host!r}: it has no authentication, so it listens on loopback "
                        f"({', '.join(LOOPBACK_HOSTS)}) unless asked (`faceinpaint demo --allow-remote`)")
    if not 0 < port < 65536:
        raise DemoError(f"port must be in 1..65535, got {port}")
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    print(f"faceinpaint demo on http://{'[' + shown + ']' if ':' in shown else shown}:{port} "
          f"({cfg.profile_name} profile, models at {cfg.resolution}x{cfg.resolution}; Ctrl-C stops it)", flush=True)
    web.run_app(make_app(cfg, device), host=host, port=port, print=None)
