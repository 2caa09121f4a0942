"""The unseen-people test set (faceinpaint.unseen): framing by eye positions, the identity check,
the provenance check."""

import hashlib

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import ROOT, require_data
from faceinpaint.config import load_config
from faceinpaint.data import identity_box_fraction, list_images, load_face
from faceinpaint.unseen import (
    IDENTITY_FRAME,
    UnseenError,
    crop_framed,
    embed_framed,
    equal_error_threshold,
    fit_eye_crop,
    framing_offset,
    nearest,
    open_set_scores,
    padding_fraction,
    read_sources,
)


def test_fit_eye_crop_recovers_the_box_that_made_the_eyes():
    rng = np.random.default_rng(3)
    target = np.array([[23.2, 24.2], [41.1, 24.2]])
    for _ in range(20):
        x0, y0, side = rng.uniform(-50, 200), rng.uniform(-50, 200), rng.uniform(100, 900)
        eyes = target * side / 64 + [x0, y0]  # where a crop (x0, y0, side) must have found them
        assert np.allclose(fit_eye_crop(eyes, target, 64), (x0, y0, side), rtol=0, atol=1e-7)
    with pytest.raises(ValueError, match="finite 2 x 2"):
        fit_eye_crop(np.full((2, 2), np.nan), target, 64)


def test_fit_eye_crop_is_the_least_squares_crop():
    # eyes whose distance and tilt no crop reproduces exactly: the fit must beat nearby crops
    eyes, target = np.array([[300.0, 410.0], [520.0, 402.0]]), np.array([[23.2, 24.2], [41.1, 24.2]])
    x0, y0, side = fit_eye_crop(eyes, target, 64)

    def error(x0, y0, side):
        return (((eyes - [x0, y0]) * 64 / side - target) ** 2).sum()

    best = error(x0, y0, side)
    for d in np.eye(3) * 0.5:
        assert best <= error(x0 + d[0], y0 + d[1], side + d[2]) and best <= error(x0 - d[0], y0 - d[1], side - d[2])


def test_crop_framed_mirrors_outside_the_image_and_matches_a_plain_crop_inside():
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    image = Image.fromarray(array)
    inside = crop_framed(image, (5, 3, 30), 30)
    assert np.array_equal(inside, array[3:33, 5:35])
    below = crop_framed(image, (10, 20, 24), 24)  # rows 20..43 of a 40-row image: 4 rows mirrored
    assert np.array_equal(below[:20], array[20:40, 10:34])
    assert np.array_equal(below[20:], array[39:35:-1, 10:34])  # row 40 is row 39, row 41 is row 38, ...
    assert padding_fraction((10, 20, 24), 50, 40) == pytest.approx(4 / 24)
    assert padding_fraction((5, 3, 30), 50, 40) == 0


def test_equal_error_threshold_against_a_brute_force_search():
    rng = np.random.default_rng(1)
    same, different = rng.normal(0.8, 0.1, 300).round(3), rng.normal(0.5, 0.1, 2000).round(3)
    threshold, rate = equal_error_threshold(same, different)
    best = None
    for t in sorted(set(same) | set(different)):
        far = sum(d >= t for d in different) / len(different)
        frr = sum(s < t for s in same) / len(same)
        if best is None or abs(far - frr) <= best[0]:
            best = (abs(far - frr), t, (far + frr) / 2)
    assert threshold == pytest.approx(best[1]) and rate == pytest.approx(best[2])
    assert 0.05 < rate < 0.1  # two unit-variance normals 3 sd apart cross at about 6.7%


def test_open_set_scores_and_nearest_against_loops():
    rng = np.random.default_rng(2)
    unit = lambda x: x / np.linalg.norm(x, axis=1, keepdims=True)  # noqa: E731
    gallery, queries = unit(rng.normal(size=(30, 8))), unit(rng.normal(size=(9, 8)))
    gallery_labels, query_labels = np.repeat(np.arange(6), 5), np.arange(9) % 6
    own, other = open_set_scores(queries, query_labels, gallery, gallery_labels)
    best, row = nearest(queries, gallery)
    for i, q in enumerate(queries):
        sims = [float(q @ g) for g in gallery]
        assert own[i] == pytest.approx(max(s for s, l in zip(sims, gallery_labels) if l == query_labels[i]))
        assert other[i] == pytest.approx(max(s for s, l in zip(sims, gallery_labels) if l != query_labels[i]))
        assert best[i] == pytest.approx(max(sims)) and row[i] == int(np.argmax(sims))
    with pytest.raises(ValueError, match="own"):
        open_set_scores(queries, query_labels + 10, gallery, gallery_labels)


def test_read_sources_checks_every_file(tmp_path):
    data = b"not really a jpeg"
    (tmp_path / "a.jpg").write_bytes(data)
    header = "file\trepository\tcommit\tpath\tsha256\tbytes\tstatus\n"
    good = f"a.jpg\to/r\t{'0' * 40}\timgs/a.jpg\t{hashlib.sha256(data).hexdigest()}\t{len(data)}\tchecked\n"
    (tmp_path / "ok.tsv").write_text(header + good)
    assert list(read_sources(tmp_path / "ok.tsv", tmp_path)["file"]) == ["a.jpg"]
    (tmp_path / "bad.tsv").write_text(header + good.replace(hashlib.sha256(data).hexdigest(), "1" * 64))
    with pytest.raises(UnseenError, match=r"a\.jpg.*expects"):
        read_sources(tmp_path / "bad.tsv", tmp_path)
    (tmp_path / "gone.tsv").write_text(header + good.replace("a.jpg\t", "b.jpg\t", 1))
    with pytest.raises(UnseenError, match=r"b\.jpg: listed in .* but missing"):
        read_sources(tmp_path / "gone.tsv", tmp_path)


def test_framing_measurement_recovers_a_known_offset():
    """Crops whose box moved by (dx, dy) source pixels show the eyes moved by -(dx, dy) * 64 / side.

    MTCNN's eyes scatter by about 1 px per face at 64 px and it reports about 90% of a shift, so
    the mean of 60 faces recovers a 2.7 px move to within 0.3 px (measured): the tolerance 0.4 px
    is below the set's framing criterion of 0.5 px."""
    require_data()
    pytest.importorskip("facenet_pytorch")
    from faceinpaint.pretrained.eyes import EyeDetector

    cfg = load_config(ROOT / "params.yaml")
    x0, y0, x1, y1 = cfg.data.crop_box
    dx, dy = 6, -4
    files = list_images(ROOT / cfg.data.source / "test")[::20][:60]
    reference = np.stack([load_face(f, (x0, y0, x1, y1), 64) for f in files])
    moved = np.stack([load_face(f, (x0 + dx, y0 + dy, x1 + dx, y1 + dy), 64) for f in files])
    detector = EyeDetector()
    offset = framing_offset(detector.eyes(reference), detector.eyes(moved))
    expected = -np.array([dx, dy]) * 64 / (x1 - x0)
    assert np.abs(offset - expected).max() < 0.4, (offset, expected)


def test_identity_similarity_against_a_hand_computed_cosine():
    """The check's similarities (framing at IDENTITY_FRAME, identity box, net, unit vectors,
    highest over a gallery) equal the cosine computed step by step with numpy."""
    require_data()
    from faceinpaint.pretrained import IdentityEmbedder, load_face_recognition

    cfg = load_config(ROOT / "params.yaml")
    net = load_face_recognition(cfg.backbones.face_recognition)
    files = list_images(ROOT / cfg.data.source / "train")
    queries, gallery = [files[0], files[30]], [files[1], files[2], files[50], files[100]]

    def frame(path):
        with Image.open(path) as im:
            face = im.convert("RGB").crop(cfg.data.crop_box)
        return np.asarray(face.resize((IDENTITY_FRAME, IDENTITY_FRAME), Image.LANCZOS), np.uint8)

    def by_hand(path):
        fx0, fy0, fx1, fy1 = identity_box_fraction(cfg)
        x0, y0, x1, y1 = (round(f * IDENTITY_FRAME) for f in (fx0, fy0, fx1, fy1))
        cut = torch.from_numpy(frame(path)[y0:y1, x0:x1].astype(np.float32)).permute(2, 0, 1)[None]
        assert abs(cut.shape[2] - 150) <= 1 and abs(cut.shape[3] - 150) <= 1
        rgb = torch.nn.functional.interpolate(cut, size=(150, 150), mode="bilinear", align_corners=False, antialias=True)
        x = (rgb - torch.tensor([122.782, 117.001, 104.298]).view(1, 3, 1, 1)) / 256.0
        with torch.no_grad():
            return net(x).numpy()[0].astype(np.float64)

    hand_q, hand_g = [by_hand(p) for p in queries], [by_hand(p) for p in gallery]
    cos = np.array([[q @ g / np.sqrt((q @ q) * (g @ g)) for g in hand_g] for q in hand_q])

    embedder = IdentityEmbedder(net, identity_box_fraction(cfg))
    q = embed_framed(embedder, np.stack([frame(p) for p in queries]))
    g = embed_framed(embedder, np.stack([frame(p) for p in gallery]))
    best, row = nearest(q, g)
    assert np.allclose(best, cos.max(axis=1), atol=1e-5)
    assert list(row) == list(cos.argmax(axis=1))
    assert files[0].parent == files[1].parent != files[50].parent
    assert cos[0, 0] > cos[0, 2]  # the same person is closer than another
