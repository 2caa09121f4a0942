"""``faceinpaint demo`` in headless Chromium: a mask painted with the mouse on a test face, the
biharmonic fill and an untrained model run from the page; the page's image must equal, byte for
byte, what ``faceinpaint inpaint`` writes for the same photo, mask and model. A file that is not
an image and a model that is not trained give a message on the page, and the server goes on."""

import base64
import io
import json
import subprocess
import sys
import urllib.request

import numpy as np
import pytest
from PIL import Image

from faceinpaint.inference import resolution_notes
from faceinpaint.ui import chromium_path, free_port, start_background, stop_group, wait_until_up
from test_reliability import CLI, prepared, project_with_data, run  # noqa: F401 - prepared: the smoke data fixture

needs_chromium = pytest.mark.skipif(
    chromium_path() is None, reason="Debian's chromium is not installed (`apt-get install chromium`; .ci/run installs it)")


@pytest.fixture()
def demo_server(tmp_path, prepared):  # noqa: F811
    project = project_with_data(tmp_path / "p", prepared)
    port = free_port()
    log = tmp_path / "demo.log"
    proc = start_background([*CLI, "demo", "--port", str(port)], log, cwd=project)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/api/models", proc, log)
        yield project, f"http://127.0.0.1:{port}/", proc
    finally:
        stop_group(proc)


def drag(page, points):
    """Press the left button at the first point, move through the others, release."""
    page.call("Input.dispatchMouseEvent", type="mousePressed", x=points[0][0], y=points[0][1], button="left", buttons=1,
              clickCount=1)
    for x, y in points[1:]:
        page.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y, button="left", buttons=1)
    page.call("Input.dispatchMouseEvent", type="mouseReleased", x=points[-1][0], y=points[-1][1], button="left",
              buttons=0, clickCount=1)


def run_page(page, models):
    page.evaluate("document.querySelectorAll('input[name=model]').forEach(e => e.checked = "
                  f"{json.dumps(models)}.includes(e.value)); delete document.body.dataset.done")
    page.evaluate("document.getElementById('run').click()")
    page.wait_for("document.body.dataset.done", 120, "the page's answer")


@needs_chromium
def test_painted_mask_gives_the_clis_image_and_bad_input_a_message(demo_server, tmp_path):
    from faceinpaint.ui import HeadlessPage

    project, base, proc = demo_server
    with HeadlessPage((1200, 900)) as page:
        page.goto(base, ready="document.body.dataset.ready")
        page.evaluate("document.querySelector('#faces img[data-index=\"3\"]').click()")
        page.wait_for("document.body.dataset.photo === 'face3.png'", 30, "test face 3")
        left, top, width = page.evaluate("(r => [r.left, r.top, r.width])(document.getElementById('maskView')"
                                         ".getBoundingClientRect())")
        # a horizontal stroke across the middle of the face, the brush 40 screen px wide
        page.evaluate("(b => { b.value = 40; b.oninput(); })(document.getElementById('brush'))")
        drag(page, [(left + width * f, top + width * 0.5) for f in (0.3, 0.4, 0.5, 0.6, 0.7)])
        run_page(page, ["biharmonic", "full"])  # `full` is not trained in this project

        shown = page.evaluate("document.querySelector('figure[data-model=biharmonic] img').src")
        assert shown.startswith("data:image/png;base64,")
        page_png = base64.b64decode(shown.split(",", 1)[1])
        mask_png = base64.b64decode(page.evaluate(
            "state.lastMaskPng.arrayBuffer().then(b => { let s = ''; for (const c of new Uint8Array(b)) "
            "s += String.fromCharCode(c); return btoa(s); })"))
        failed = page.evaluate("document.querySelector('.failed[data-model=full]').textContent")
        assert "model.pt" in failed and "Ours" in page.evaluate("document.getElementById('message').textContent")
        notes = page.evaluate("document.getElementById('notes').innerText")

        # the painted mask: white along the stroke, black away from it, nothing in between
        with urllib.request.urlopen(base + "api/face/3") as r:
            face_png = r.read()
        face = np.asarray(Image.open(io.BytesIO(face_png)).convert("RGB"))
        mask = np.asarray(Image.open(io.BytesIO(mask_png)).convert("L"))
        side = face.shape[0]
        assert mask.shape == (side, side) and set(np.unique(mask)) == {0, 255}
        assert mask[side // 2, side // 2] == 255 and mask[side // 2, int(side * 0.65)] == 255
        assert mask[2, 2] == 0 and mask[side - 3, side // 2] == 0
        expected_note = resolution_notes(side, "biharmonic", (mask > 127).astype(np.uint8))[0]
        assert expected_note in notes

        # the CLI on the same photo, mask and model writes the same bytes
        (tmp_path / "face.png").write_bytes(face_png)
        (tmp_path / "mask.png").write_bytes(mask_png)
        out = run(project, "inpaint", str(tmp_path / "face.png"), str(tmp_path / "mask.png"), "--model", "biharmonic",
                  "-o", str(tmp_path / "cli.png"))
        assert (tmp_path / "cli.png").read_bytes() == page_png
        assert expected_note in out.stderr
        result = np.asarray(Image.open(io.BytesIO(page_png)).convert("RGB"))
        hole = mask > 127
        assert np.array_equal(result[~hole], face[~hole]) and not np.array_equal(result[hole], face[hole])

        # a file that is not an image, through the page's file input
        bad = tmp_path / "notes.txt"
        bad.write_text("not a photo\n")
        node = page.call("DOM.querySelector", nodeId=page.call("DOM.getDocument")["root"]["nodeId"], selector="#file")
        page.call("DOM.setFileInputFiles", files=[str(bad)], nodeId=node["nodeId"])
        page.wait_for("document.body.dataset.photo === 'notes.txt'", 30, "the text file")
        drag(page, [(left + width * 0.5, top + width * 0.5), (left + width * 0.6, top + width * 0.5)])
        run_page(page, ["biharmonic"])
        assert "not a readable image" in page.evaluate("document.getElementById('message').textContent")
        assert proc.poll() is None

        # the server goes on: another face, another result
        page.evaluate("document.querySelector('#faces img[data-index=\"5\"]').click()")
        page.wait_for("document.body.dataset.photo === 'face5.png'", 30, "test face 5")
        drag(page, [(left + width * 0.4, top + width * 0.4), (left + width * 0.6, top + width * 0.6)])
        run_page(page, ["biharmonic"])
        assert page.evaluate("document.querySelector('figure[data-model=biharmonic] img').src").startswith("data:image/png")
        assert page.evaluate("document.getElementById('message').textContent") == ""


def test_demo_refuses_a_non_loopback_host():
    out = subprocess.run([sys.executable, "-m", "faceinpaint.cli", "demo", "--host", "0.0.0.0"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode != 0 and "refusing to serve the demo on '0.0.0.0'" in out.stderr


def test_resolution_notes_say_how_a_larger_photo_is_filled():
    mask = np.zeros((512, 512), np.uint8)
    mask[100:300, 150:250] = 1
    note, warning = resolution_notes(64, "full", mask)
    assert "works at 64x64" in note and "512x512" in note and "resized to 64x64" in note
    # 100x200 px of the photo from 8x enlarged model pixels: 100/8, 200/8
    assert "100x200 px" in warning and "about 12x25 pixels" in warning and "8x" in warning
    small = np.zeros((128, 128), np.uint8)
    small[10:60, 20:90] = 1
    assert "(2x)" in resolution_notes(64, "full", small)[0] and resolution_notes(64, "full", small)[1] is None
    note, warning = resolution_notes(64, "full", np.pad(mask[:64, :64], 0))
    assert "filled at its own size" in note and warning is None
