import json

import numpy as np
import pytest
import yaml
from PIL import Image

from conftest import require_data
from faceinpaint.config import parse_params
from faceinpaint.data import (DataError, EvaluationDataset, PreparedData, TrainingDataset, identity_box_fraction,
                              load_face, prepare, to_tensor_image, to_uint8_image)
from faceinpaint.masks import (MaskError, irregular_bin_indices, load_mask_file, square_boxes, square_masks,
                               validate_mask_array)


@pytest.mark.parametrize("res", [32, 64, 256, 1024])
def test_square_masks_follow_the_documented_rule(res):
    boxes = square_boxes(res)
    assert len(boxes) == 10
    sides = [b[2] - b[0] for b in boxes]
    assert all(b[3] - b[1] == s for b, s in zip(boxes, sides))  # squares
    assert sides == sorted(sides)
    assert sides[0] == round(res / 8) and sides[-1] == round(res / 4)
    for x0, y0, x1, y1 in boxes:
        assert 0 <= x0 < x1 <= res and 0 <= y0 < y1 <= res
    areas = square_masks(res).reshape(10, -1).mean(1)
    assert areas.min() == pytest.approx(1 / 64, rel=0.15) and areas.max() == pytest.approx(1 / 16, rel=0.15)
    assert len(set(boxes)) == 10


def test_irregular_indices_split_bins_in_halves():
    ev = irregular_bin_indices(6, 2000, 50, 0, 1000)
    tr = irregular_bin_indices(6, 2000, 250, 1000, 2000)
    for b in range(6):
        assert all(b * 2000 <= i < b * 2000 + 1000 for i in ev[b])
        assert all(b * 2000 + 1000 <= i < (b + 1) * 2000 for i in tr[b])
    assert not set(sum(ev, [])) & set(sum(tr, []))
    with pytest.raises(MaskError):
        irregular_bin_indices(6, 2000, 2000, 0, 1000)


def test_irregular_mask_resize_keeps_area_and_polarity():
    require_data()
    path = "data/masks/irregular/04500.png"  # bin 2: 20-30% hole
    full = load_mask_file(path)
    assert full.shape == (512, 512) and set(np.unique(full)) <= {0, 1}
    assert 0.2 <= full.mean() <= 0.3  # white = hole, so the hole fraction lands in its bin
    small = load_mask_file(path, 64)
    assert small.shape == (64, 64)
    assert abs(small.mean() - full.mean()) < 0.03


def test_mask_file_errors_name_the_file(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(MaskError, match="broken.png"):
        load_mask_file(bad)
    rect = tmp_path / "rect.png"
    Image.fromarray(np.zeros((10, 20), np.uint8)).save(rect)
    with pytest.raises(MaskError, match="rect.png.*square"):
        load_mask_file(rect, 8)
    with pytest.raises(MaskError, match="m.png: mask is 4x4, expected 8x8"):
        validate_mask_array(np.ones((4, 4), np.uint8), (8, 8), "m.png")
    with pytest.raises(MaskError, match="no hole"):
        validate_mask_array(np.zeros((8, 8), np.uint8), (8, 8), "m.png")


def test_load_face_equals_manual_crop_and_resize():
    require_data()
    path = sorted(__import__("pathlib").Path("data/celeba/test/celeb_0").glob("*.jpg"))[0]
    got = load_face(path, (19, 59, 159, 199), 64)
    ref = np.asarray(Image.open(path).convert("RGB").crop((19, 59, 159, 199)).resize((64, 64), Image.LANCZOS))
    assert np.array_equal(got, ref)


def test_tensor_round_trip_is_exact():
    img = np.random.default_rng(0).integers(0, 256, (8, 8, 3), dtype=np.uint8)
    t = to_tensor_image(img)
    assert t.min() >= -1 and t.max() <= 1
    assert np.array_equal(to_uint8_image(t), img)


def _fake_source(tmp_path, n_per=3, bad=None):
    src = tmp_path / "faces"
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        for ident in ("a", "b"):
            d = src / split / ident
            d.mkdir(parents=True)
            for k in range(n_per):
                Image.fromarray(rng.integers(0, 256, (40, 30, 3), dtype=np.uint8)).save(d / f"{k}.png")
    if bad:
        (src / "train" / "a" / bad).write_bytes(b"\x89PNG truncated")
    return src


def _cfg(tmp_path, src, **data):
    raw = yaml.safe_load(open("params.yaml"))
    raw["profile"] = "smoke"
    raw["data"] = dict(raw["data"], source=str(src), crop_box=None, identity_box=None, **data)
    raw["profiles"]["smoke"]["evaluate"]["irregular_per_bin"] = 2
    return parse_params(raw)


def test_prepare_any_folder_and_bad_file_policy(tmp_path):
    require_data()
    src = _fake_source(tmp_path, bad="zz_corrupt.png")
    with pytest.raises(DataError, match="zz_corrupt.png"):
        prepare(_cfg(tmp_path, src), tmp_path / "out_err", train_irregular_per_bin=2)
    info = prepare(_cfg(tmp_path, src, on_bad_file="skip"), tmp_path / "out", train_irregular_per_bin=2)
    assert info["splits"]["train"]["count"] == 6 and len(info["splits"]["train"]["skipped"]) == 1
    prep = PreparedData(tmp_path / "out")
    assert prep.images("train").shape == (6, 32, 32, 3)
    assert list(prep.index("test")["identity"]) == ["a"] * 3 + ["b"] * 3
    masks, rows = prep.irregular_eval()
    assert masks.shape == (12, 32, 32) and sorted(rows["bin"].unique()) == list(range(6))
    # bins are ordered by hole area
    assert rows.groupby("bin")["hole_fraction"].mean().is_monotonic_increasing
    assert json.loads((tmp_path / "out" / "info.json").read_text())["square_rule"] == "test image i uses square i % 10"


def test_centre_crop_when_no_box(tmp_path):
    img = np.zeros((40, 30, 3), np.uint8)
    img[5:35] = 200  # the centred 30x30 square is uniform grey
    p = tmp_path / "x.png"
    Image.fromarray(img).save(p)
    assert (load_face(p, None, 8) == 200).all()
    with pytest.raises(DataError, match="x.png.*too small for crop_box"):
        load_face(p, (0, 0, 50, 50), 8)


def test_identity_box_maps_into_the_crop():
    cfg = parse_params(yaml.safe_load(open("params.yaml")))
    assert identity_box_fraction(cfg) == pytest.approx((14 / 140, 21 / 140, 126 / 140, 133 / 140))


def test_training_masks_are_reproducible_per_epoch():
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    irregular = (rng.random((4, 32, 32)) < 0.3).astype(np.uint8)
    a = TrainingDataset(images, irregular, seed=3, irregular_prob=0.5)
    b = TrainingDataset(images, irregular, seed=3, irregular_prob=0.5)
    for i in range(5):
        assert (a[i]["mask"] == b[i]["mask"]).all() and (a[i]["image"] == b[i]["image"]).all()
    before = [a[i]["mask"].clone() for i in range(5)]
    a.set_epoch(1)
    assert any(not (a[i]["mask"] == before[i]).all() for i in range(5))
    for i in range(5):
        m = a[i]["mask"]
        assert m.shape == (1, 32, 32) and set(m.unique().tolist()) <= {0.0, 1.0} and m.sum() > 0


def test_square_sizes_in_training_span_the_range():
    images = np.zeros((200, 64, 64, 3), np.uint8)
    ds = TrainingDataset(images, None, seed=0)
    sides = {int(ds[i]["mask"].sum().sqrt()) for i in range(200)}
    assert min(sides) == 8 and max(sides) == 16


def test_evaluation_pairs_follow_i_mod_10():
    images = np.zeros((23, 32, 32, 3), np.uint8)
    masks = square_masks(32)
    ds = EvaluationDataset.squares(images, masks)
    assert [ds[i]["mask_id"] for i in range(23)] == [i % 10 for i in range(23)]
    assert (ds[13]["mask"][0].numpy() == masks[3]).all()


def test_progress_bar_shows_rate_and_eta_on_a_terminal_only(monkeypatch):
    import io
    import sys

    from faceinpaint.data import progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr(sys, "stderr", io.StringIO())  # a log file: no bar
    assert list(progress(range(5), "prepare train", "image")) == list(range(5))
    assert sys.stderr.getvalue() == ""
    term = Terminal()
    monkeypatch.setattr(sys, "stderr", term)
    assert list(progress(range(5), "prepare train", "image")) == list(range(5))
    shown = term.getvalue()
    assert "prepare train:" in shown and "0/5 [00:00<" in shown and "image/s]" in shown  # [elapsed<ETA, rate]
