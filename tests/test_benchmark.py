"""The benchmark export and the scoring of a predictions folder (faceinpaint.benchmark,
faceinpaint.evaluate.evaluate_predictions), on a scratch prepared folder at the smoke profile."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from conftest import ROOT
from faceinpaint.benchmark import MANIFEST, BenchmarkError, evaluation_sets, expected_manifest, export, read_predictions
from faceinpaint.config import load_config
from faceinpaint.evaluate import RealFeatures, evaluate_model, evaluate_predictions, metric_networks
from faceinpaint.metrics import area_bin
from faceinpaint.models import spec, resolve
from test_evaluate import fake_prepared


@pytest.fixture(scope="module")
def bench(tmp_path_factory):
    if not (ROOT / "data" / "weights").is_dir():
        pytest.skip("data/ not pulled (run `dvc pull`)")
    cfg = load_config(ROOT / "params.yaml", profile="smoke")
    tmp = tmp_path_factory.mktemp("bench")
    prepared = fake_prepared(tmp / "prepared", cfg.resolution, cfg.evaluate.max_test_images + 5, 20)
    export(cfg, tmp / "export", prepared)
    return cfg, prepared, tmp


@pytest.fixture(scope="module")
def features(bench):
    cfg, prepared, tmp = bench
    RealFeatures.compute(cfg, prepared, metric_networks(cfg)).save(tmp / "features")
    return tmp / "features"


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def test_the_export_is_byte_stable_and_its_manifest_describes_every_file(bench, tmp_path):
    cfg, prepared, tmp = bench
    again = export(cfg, tmp_path / "again", prepared)
    first, second = _files(tmp / "export"), _files(tmp_path / "again")
    assert first == second  # exporting twice gives the same bytes
    manifest = json.loads(first[MANIFEST])
    assert manifest == json.loads(json.dumps(again)) == json.loads(json.dumps(expected_manifest(cfg, prepared)))
    n_square, n_irregular = cfg.evaluate.max_test_images, 20
    assert manifest["sets"] == {"test/square": n_square, "test/irregular": n_irregular}
    assert len(first) == 1 + 3 * (n_square + n_irregular)
    sets, mask_files = evaluation_sets(cfg, prepared)
    for entry in manifest["files"]:
        for kind in ("inputs", "masks", "originals"):
            assert hashlib.sha256(first[f"{kind}/{entry['file']}"]).hexdigest() == entry["sha256"][kind]
        item = sets[entry["mask_set"]][entry["position"]]
        assert entry["image_id"] == str(item["index"])
        assert entry["mask_id"] == (item["mask_id"] if entry["mask_set"] == "square" else mask_files[item["mask_id"]])
        mask = np.asarray(Image.open(tmp / "export" / "masks" / entry["file"]))
        original = np.asarray(Image.open(tmp / "export" / "originals" / entry["file"]))
        inputs = np.asarray(Image.open(tmp / "export" / "inputs" / entry["file"]))
        hole = mask == 255
        assert set(np.unique(mask)) <= {0, 255} and np.array_equal(hole, item["mask"][0].numpy() > 0.5)
        assert np.array_equal(original, prepared.images("test")[item["index"]])  # the prepared photo itself
        assert np.array_equal(inputs[~hole], original[~hole]) and (inputs[hole] == 128).all()
        assert entry["hole_fraction"] == hole.mean() and entry["area_bin"] == area_bin(hole.mean())


def _biharmonic_npy(cfg, prepared, folder: Path, manifest_from: Path) -> None:
    """The registered biharmonic fill's composites of every benchmark file, float32 .npy."""
    inpaint = resolve(spec("biharmonic").loader)(cfg, "biharmonic", "cpu")
    sets, _ = evaluation_sets(cfg, prepared)
    manifest = json.loads((manifest_from / MANIFEST).read_text())
    for entry in manifest["files"]:
        item = sets[entry["mask_set"]][entry["position"]]
        image, mask = item["image"][None], item["mask"][None]
        composite = inpaint(image * (1 - mask), mask)["composite"][0]
        path = folder / (entry["file"][:-4] + ".npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, composite.permute(1, 2, 0).numpy().astype(np.float32))
    shutil.copyfile(manifest_from / MANIFEST, folder / MANIFEST)


def test_a_registered_models_composites_scored_as_predictions_give_its_evaluation_bit_for_bit(bench, features, tmp_path):
    cfg, prepared, tmp = bench
    _biharmonic_npy(cfg, prepared, tmp_path / "preds", tmp / "export")
    own = evaluate_model(cfg, "biharmonic", tmp_path / "own", prepared, features_dir=features)
    scored = evaluate_predictions(cfg, tmp_path / "preds", "bih-outside", tmp_path / "scored", prepared, features_dir=features)
    for key in ("model", "training", "external", "known_pixels"):
        own.pop(key, None), scored.pop(key, None)
    assert own == scored  # every number, the FD provenance and settings included
    for name in ("per_image.csv",):
        assert (tmp_path / "own" / name).read_bytes() == (tmp_path / "scored" / name).read_bytes()
    for name in ("features.npz", "samples.npz"):
        with np.load(tmp_path / "own" / name) as a, np.load(tmp_path / "scored" / name) as b:
            assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files), name


def test_an_outside_program_on_the_export_is_scored_and_its_known_pixel_changes_reported(bench, features, tmp_path):
    """scripts/external_biharmonic.py (no suite import) over the exported inputs; known pixels of a
    few predictions altered afterwards: reported exactly, and replaced before scoring."""
    cfg, prepared, tmp = bench
    out = tmp_path / "preds"
    subprocess.run([sys.executable, str(ROOT / "scripts" / "external_biharmonic.py"), str(tmp / "export"), str(out)],
                   check=True, capture_output=True)
    manifest = json.loads((out / MANIFEST).read_text())
    altered, known_values = 0, 0
    for k, entry in enumerate(manifest["files"]):
        hole = np.asarray(Image.open(tmp / "export" / "masks" / entry["file"])) == 255
        known_values += 3 * int((~hole).sum())
        if k % 7 == 0:  # brighten the first known pixel's red value by one level
            path = out / entry["file"]
            pred = np.asarray(Image.open(path)).copy()
            y, x = np.argwhere(~hole)[0]
            pred[y, x, 0] = pred[y, x, 0] + 1 if pred[y, x, 0] < 255 else 254
            Image.fromarray(pred).save(path)
            altered += 1
    summary = evaluate_predictions(cfg, out, "biharmonic-outside", tmp_path / "ev", prepared, features_dir=features)
    kp = summary["known_pixels"]
    assert kp["changed_fraction"] == altered / known_values  # one value each; the figure samples are not counted again
    assert kp["max_abs"] == pytest.approx(1 / 255)
    assert summary["external"]["format"] == "png" and summary["training"] == {}
    # the composite keeps the originals' known pixels: the whole-image error is the hole's, diluted
    rows = pd.read_csv(tmp_path / "ev" / "per_image.csv")
    assert len(rows) == len(manifest["files"]) and np.isfinite(rows["psnr_hole"]).all()
    assert np.allclose(rows["l1"], rows["hole_l1"] * rows["hole_fraction"], rtol=1e-9, atol=0)


# ------------------------------------------------------------------------- bad folders


def _png16_rgb(path: Path, res: int) -> None:
    """A valid 16-bit RGB PNG (PIL cannot write one)."""
    raw = b"".join(b"\x00" + bytes(6 * res) for _ in range(res))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", res, res, 16, 2, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


@pytest.fixture
def good_png(bench, tmp_path):
    """A complete, valid PNG predictions folder (the originals, as a method could return)."""
    cfg, prepared, tmp = bench
    folder = tmp_path / "preds"
    shutil.copytree(tmp / "export" / "originals", folder)
    shutil.copyfile(tmp / "export" / MANIFEST, folder / MANIFEST)
    return folder


def _first(folder: Path) -> Path:
    manifest = json.loads((folder / MANIFEST).read_text())
    return folder / manifest["files"][0]["file"]


BAD_CASES = {
    "no manifest": (lambda f, r: (f / MANIFEST).unlink(), r"manifest\.json: missing"),
    "other suite version": (lambda f, r: _edit_manifest(f, suite_version="0.0.9"),
                            r"manifest\.json: suite_version is '0\.0\.9', this suite's benchmark has"),
    "other set": (lambda f, r: _edit_manifest(f, params=lambda p: {**p, "evaluate.max_test_images": 99}),
                  r"manifest\.json: params is .*another suite version or set"),
    "missing predictions": (lambda f, r: [(f / n).unlink() for n in _names(f)[3:6]],
                            r"3 of 50 predictions missing: test/square/00003_m00003\.png"),
    "extra file": (lambda f, r: (f / "test" / "notes.txt").write_text("x"), r"1 files that are not predictions .*test/notes\.txt"),
    "wrong size": (lambda f, r: Image.new("RGB", (r + 1, r)).save(_first(f)), r"00000_m00000\.png: {r1}x{r}, expected {r}x{r}"),
    "greyscale": (lambda f, r: Image.new("L", (r, r)).save(_first(f)), r"colour type greyscale \(1 channel\), expected RGB"),
    "alpha channel": (lambda f, r: Image.new("RGBA", (r, r)).save(_first(f)), r"colour type RGBA \(4 channels\), expected RGB"),
    "16-bit": (lambda f, r: _png16_rgb(_first(f), r), r"bit depth 16, expected 8 bits per channel"),
    "not an image": (lambda f, r: _first(f).write_text("not a picture"), r"00000_m00000\.png: not a PNG image"),
    "mixed formats": (lambda f, r: (_first(f).unlink(), np.save(str(_first(f))[:-4] + ".npy", np.zeros((r, r, 3), np.float32))),
                      r"both \.png and \.npy"),
}


def _names(folder: Path) -> list[str]:
    return [e["file"] for e in json.loads((folder / MANIFEST).read_text())["files"]]


def _edit_manifest(folder: Path, **changes) -> None:
    manifest = json.loads((folder / MANIFEST).read_text())
    for key, value in changes.items():
        manifest[key] = value(manifest[key]) if callable(value) else value
    (folder / MANIFEST).write_text(json.dumps(manifest))


@pytest.mark.parametrize("case", list(BAD_CASES))
def test_each_bad_folder_is_refused_by_name_and_nothing_is_written(bench, good_png, tmp_path, case):
    cfg, prepared, tmp = bench
    spoil, message = BAD_CASES[case]
    spoil(good_png, cfg.resolution)
    with pytest.raises(BenchmarkError, match=message.format(r=cfg.resolution, r1=cfg.resolution + 1)):
        evaluate_predictions(cfg, good_png, "method", tmp_path / "out", prepared, features_dir=tmp / "no-features")
    assert not (tmp_path / "out").exists()


def test_npy_predictions_of_the_wrong_kind_are_refused(bench, tmp_path):
    cfg, prepared, tmp = bench
    expected = expected_manifest(cfg, prepared)
    folder = tmp_path / "preds"
    res = cfg.resolution
    for entry in expected["files"]:
        path = folder / (entry["file"][:-4] + ".npy")
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.zeros((res, res, 3), np.float32))
    shutil.copyfile(tmp / "export" / MANIFEST, folder / MANIFEST)
    assert read_predictions(folder, expected).kind == "npy"
    first = folder / (expected["files"][0]["file"][:-4] + ".npy")
    np.save(first, np.zeros((res, res, 3), np.float64))
    with pytest.raises(BenchmarkError, match=rf"00000_m00000\.npy: float64 array of shape \({res}, {res}, 3\), expected float32"):
        read_predictions(folder, expected)
    np.save(first, np.full((res, res, 3), np.nan, np.float32))
    with pytest.raises(BenchmarkError, match="inf or nan"):
        read_predictions(folder, expected)


def test_an_external_method_may_not_take_a_registered_models_name(bench, good_png, tmp_path):
    cfg, prepared, _ = bench
    with pytest.raises(BenchmarkError, match="registered model"):
        evaluate_predictions(cfg, good_png, "full", tmp_path / "out", prepared)
    with pytest.raises(BenchmarkError, match="letters, digits"):
        evaluate_predictions(cfg, good_png, "../x", tmp_path / "out", prepared)
    assert not (tmp_path / "out").exists()


def test_the_protocol_no_longer_imports_the_recipes():
    """evaluate.py is the protocol: the registry hands it callables; recipes may use it, not the reverse."""
    import ast

    for module in ("evaluate.py", "benchmark.py", "metrics.py", "evalformat.py"):
        tree = ast.parse((ROOT / "src" / "faceinpaint" / module).read_text())
        imported = {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
        assert not any(m.split(".")[-1] in ("recipes", "training", "stages") for m in imported), module


def test_external_methods_join_the_tables_and_paired_comparisons_below_the_papers_rows(tmp_path):
    """An external method's evaluation folder named in ``external`` (params external_methods):
    a marked row under the paper's rows of Tables 1-2 (those rows as they were), and paired
    intervals against every paper model whose estimate is the mean per-image difference."""
    from faceinpaint.evalformat import write_eval_outputs
    from faceinpaint.report import build_report
    from test_report import MODELS as REPORT_MODELS, _model

    root = tmp_path / "eval"
    for name, (level, shift, twin, seed) in REPORT_MODELS.items():
        m = _model(name, level, shift, twin, seed)
        write_eval_outputs(root / name, m["rows"], m["summary"], m["feats"], m["samples"])
    plain = build_report(root, tmp_path / "plain", n_bootstrap=10, n_bootstrap_fd=10)
    m = _model("mine", 0.5, 0.5, False, 7)
    m["summary"].update(training={}, external={"predictions": "preds/mine", "format": "png", "manifest_sha256": "0" * 64})
    write_eval_outputs(root / "mine", m["rows"], m["summary"], m["feats"], m["samples"])
    build_report(root, tmp_path / "with", n_bootstrap=10, n_bootstrap_fd=10, external={"mine": "preds/mine"})
    for table in ("table1.md", "table2.md"):
        before = [line for line in plain[table].read_text().splitlines() if line.startswith("| ")]
        after = [line for line in (tmp_path / "with" / table).read_text().splitlines() if line.startswith("| ")]
        assert after[:len(before)] == before  # the paper's rows (and the classical one) as they were
        assert len(after) == len(before) + 1 and after[-1].startswith("| mine (external) |") and "external method" in after[-1]
    assert "Rows marked (external)" in (tmp_path / "with" / "table1.md").read_text()
    assert "mine" not in (tmp_path / "with" / "table_stage1.md").read_text()
    claims = json.loads((tmp_path / "with" / "claims.json").read_text())
    assert claims["claims"] == json.loads(plain["claims.json"].read_text())["claims"]  # C1-C3 untouched
    (outside,) = claims["external"]
    assert outside["method"] == "mine"
    ours = pd.read_csv(root / "full" / "per_image.csv", dtype={"image_id": str})
    mine = pd.read_csv(root / "mine" / "per_image.csv", dtype={"image_id": str})
    a = mine[mine["mask_set"] == "square"].sort_values("image_id")["psnr"].to_numpy()
    b = ours[ours["mask_set"] == "square"].sort_values("image_id")["psnr"].to_numpy()
    vs_ours = next(c for c in outside["comparisons"] if c["worse"] == "Ours" and c["metric"] == "psnr")
    assert vs_ours["estimate"] == pytest.approx(float(np.mean(a - b)), rel=1e-12) and vs_ours["lo"] <= vs_ours["estimate"] <= vs_ours["hi"]
    assert {c["worse"] for c in outside["comparisons"]} == {"Ours", "Variant 2", "Variant 1", "PConv", "RFR"}
    assert "## External: mine against the paper's models" in (tmp_path / "with" / "claims.md").read_text()
