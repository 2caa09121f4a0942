"""The evaluation with the stored real-image features (the ``test_features`` stage) against the
same evaluation computing every network feature inline, in a scratch prepared folder."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from conftest import ROOT
from faceinpaint.config import load_config, parse_params
from faceinpaint.data import PreparedData
from faceinpaint.evaluate import RealFeatures, RealFeaturesError, evaluate_model, metric_networks, write_test_features


def fake_prepared(root: Path, res: int, n_test: int, n_irregular: int, seed: int = 0) -> PreparedData:
    """A prepared folder in the layout of ``faceinpaint prepare``: random test photos, ten square
    masks, irregular evaluation masks of growing area."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    np.save(root / "test_images.npy", rng.integers(0, 256, (n_test, res, res, 3), dtype=np.uint8))
    squares, boxes = np.zeros((10, res, res), np.uint8), []
    for k in range(10):
        y, x = (k * 3) % (res // 2), (k * 5) % (res // 2)
        squares[k, y:y + res // 4, x:x + res // 4] = 1
        boxes.append([y, x, y + res // 4, x + res // 4])
    np.save(root / "square_masks.npy", squares)
    irregular = (rng.random((n_irregular, res, res)) < np.linspace(0.05, 0.5, n_irregular)[:, None, None]).astype(np.uint8)
    np.save(root / "irregular_eval.npy", irregular)
    pd.DataFrame({"mask": range(n_irregular), "file": [f"{20 * k:05d}.png" for k in range(n_irregular)],
                  "bin": [0] * n_irregular, "hole_fraction": irregular.mean(axis=(1, 2))}).to_csv(root / "irregular_eval.csv", index=False)
    (root / "info.json").write_text(json.dumps({"resolution": res, "square_boxes": boxes}))
    return PreparedData(root)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    if not (ROOT / "data" / "weights").is_dir():
        pytest.skip("data/ not pulled (run `dvc pull`)")
    cfg = load_config(ROOT / "params.yaml", profile="smoke")
    # partial last batches in both sets: batch-composition effects would show
    assert cfg.evaluate.max_test_images % cfg.evaluate.batch_size and cfg.evaluate.batch_size < 20
    tmp = tmp_path_factory.mktemp("eval")
    prepared = fake_prepared(tmp / "prepared", cfg.resolution, cfg.evaluate.max_test_images + 5, 20)
    features = RealFeatures.compute(cfg, prepared, metric_networks(cfg))
    features.save(tmp / "features")
    return cfg, prepared, tmp


def test_stored_real_features_give_the_inline_evaluation_bit_for_bit(setup):
    cfg, prepared, tmp = setup
    stored = evaluate_model(cfg, "biharmonic", tmp / "stored", prepared, features_dir=tmp / "features")
    inline = evaluate_model(cfg, "biharmonic", tmp / "inline", prepared, features_dir=None)
    assert stored == inline
    for name in ("per_image.csv", "summary.json"):
        assert (tmp / "stored" / name).read_bytes() == (tmp / "inline" / name).read_bytes(), name
    with np.load(tmp / "stored" / "features.npz") as a, np.load(tmp / "inline" / "features.npz") as b:
        assert a.files == b.files and all(np.array_equal(a[k], b[k]) for k in a.files)
    rows = pd.read_csv(tmp / "stored" / "per_image.csv")
    assert (rows["mask_set"] == "square").sum() == cfg.evaluate.max_test_images
    assert (rows["mask_set"] == "irregular").sum() == 20


def test_stored_features_follow_the_evaluation_order(setup):
    cfg, prepared, tmp = setup
    feats = RealFeatures.load(tmp / "features", RealFeatures.expected_meta(cfg, prepared, metric_networks(cfg)))
    n = cfg.evaluate.max_test_images
    assert feats.arrays["square_image"].tolist() == list(range(n))
    assert feats.arrays["irregular_image"].tolist() == [k % (n + 5) for k in range(20)]
    assert feats.arrays["square_fd"].shape[0] == n and feats.arrays["irregular_id"].shape == (20, 128)
    import torch

    with pytest.raises(RealFeaturesError, match="not this batch"):
        feats.batch("square", 1, torch.arange(0, 4))


def test_features_of_another_evaluation_are_refused_by_name(setup, tmp_path):
    cfg, prepared, tmp = setup
    networks = metric_networks(cfg)
    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["profile"] = "smoke"
    raw["profiles"]["smoke"]["evaluate"]["batch_size"] += 1
    other = parse_params(raw)
    with pytest.raises(RealFeaturesError, match=r"meta\.json: batch_size is .*test_features"):
        RealFeatures.load(tmp / "features", RealFeatures.expected_meta(other, prepared, networks))
    changed = fake_prepared(tmp_path / "prepared", cfg.resolution, cfg.evaluate.max_test_images + 5, 20, seed=1)
    with pytest.raises(RealFeaturesError, match="test_images_sha256"):
        RealFeatures.load(tmp / "features", RealFeatures.expected_meta(cfg, changed, networks))
    with pytest.raises(RealFeaturesError, match=r"features\.npz: missing \(run `dvc repro test_features`\)"):
        RealFeatures.load(tmp_path / "nothing", RealFeatures.expected_meta(cfg, prepared, networks))


def test_the_stage_writes_what_the_evaluation_reads(setup, tmp_path, monkeypatch):
    cfg, prepared, tmp = setup
    import faceinpaint.evaluate as evaluate

    monkeypatch.setattr(evaluate, "PREPARED_DIR", prepared.root)
    written = write_test_features(cfg, tmp_path / "tf")
    again = RealFeatures.load(tmp_path / "tf", RealFeatures.expected_meta(cfg, prepared, metric_networks(cfg)))
    ref = RealFeatures.load(tmp / "features", written.meta)
    assert sorted(again.arrays) == sorted(ref.arrays)
    assert all(np.array_equal(again.arrays[k], ref.arrays[k]) for k in ref.arrays)


@pytest.fixture(scope="module")
def evaluated(setup):
    """One evaluation of the classical fill with the stored features: (summary, its folder)."""
    cfg, prepared, tmp = setup
    return evaluate_model(cfg, "biharmonic", tmp / "evaluated", prepared, features_dir=tmp / "features"), tmp / "evaluated"


def test_the_metrics_file_holds_only_the_numbers_compared_across_experiments(setup, evaluated):
    from faceinpaint.evaluate import metrics_file

    cfg, prepared, tmp = setup
    summary, folder = evaluated
    out = metrics_file(summary, "biharmonic")
    assert all(isinstance(v, (int, float)) for v in out.values())  # no strings or nested blocks: one column each
    assert out["n_images"] == cfg.evaluate.max_test_images and out["images_seen"] == 0  # the classical fill trains on nothing
    assert out["psnr"] == round(summary["psnr"], 5) and sum(k.startswith("fd_") for k in out) == 2  # both FDs
    trained = dict(summary, training={"pconv": {"images_seen": 80000, "train_time_s": 1.0}})
    assert metrics_file(trained, "pconv")["images_seen"] == 80000
    # the hole-only metrics beside the whole-image ones: in the metrics file, the means of the rows
    rows = pd.read_csv(folder / "per_image.csv")
    square = rows[rows["mask_set"] == "square"]
    for key in ("psnr_hole", "l1", "hole_l1"):
        assert out[key] == round(float(square[key].mean()), 5), key
    assert (square["psnr_hole"] < square["psnr"]).all()  # the known pixels are exact: the whole image scores higher


def test_every_fd_records_its_provenance_and_the_run_logs_it(setup, evaluated):
    """FD provenance against the weight files hashed here, and as the MLflow params of the run."""
    import hashlib

    from faceinpaint.evaluate import provenance_params
    from faceinpaint.metrics import FACE_FD_BACKBONE, metric_key
    from faceinpaint.pretrained.efficientnet_lite import efficientnet_lite0_weights_path
    from faceinpaint.pretrained.weights import hub_checkpoints_dir, registered_path

    cfg, prepared, tmp = setup
    summary, folder = evaluated
    prov = json.loads((folder / "summary.json").read_text())["fd_provenance"]
    assert prov == summary["fd_provenance"]
    fd_keys = sorted(k for k in summary if k.startswith("fd_") and k != "fd_provenance")
    assert sorted(prov) == fd_keys and metric_key("fd", FACE_FD_BACKBONE) in prov
    files = {"efficientnet_lite0-pool": efficientnet_lite0_weights_path(),
             "inception-v3-pool3": registered_path("fid_inception", hub_checkpoints_dir()),
             FACE_FD_BACKBONE: Path(cfg.backbones.face_recognition) / "face_recognition_model.bin"}
    for key, p in prov.items():
        assert key == metric_key("fd", p["backbone"])
        assert p["weights_sha256"] == hashlib.sha256(Path(files[p["backbone"]]).read_bytes()).hexdigest()
        assert p["n_images"] == summary["n_images"] == cfg.evaluate.max_test_images
        assert p["input_range"] == [-1.0, 1.0] and p["resize"]["size"] in (150, 224, 299) and p["resize"]["filter"]
    params = provenance_params(summary)
    assert params[f"fd_provenance.{fd_keys[0]}.weights_sha256"] == prov[fd_keys[0]]["weights_sha256"]
    assert len(params) == 6 * len(prov)  # backbone, sha256, count, resize size and filter, range


def test_the_protocol_and_the_training_stages_agree_where_models_live():
    from faceinpaint.evaluate import MODELS_DIR
    from faceinpaint.recipes import MODELS_DIR as TRAINED

    assert MODELS_DIR == TRAINED


def test_an_evaluations_curve_images_score_what_the_training_runs_curve_evaluator_does(setup, tmp_path, monkeypatch):
    """The learning curves' final point of a run that ended between curve budgets is read from its
    evaluation (``evalformat.on_curve_subset``: the first n square rows and their features); the
    points the run took come from ``CurveEvaluator`` on the model. Both paths, same model: same
    numbers (n not a multiple of the batch size, so the batches differ too)."""
    import faceinpaint.evaluate as evaluate
    from faceinpaint.evalformat import load_eval_dir, on_curve_subset
    from faceinpaint.metrics import FACE_FD_BACKBONE, metric_key
    from faceinpaint.recipes import load_inpainter

    cfg, prepared, tmp = setup
    monkeypatch.setattr(evaluate, "PREPARED_DIR", prepared.root)
    evaluate_model(cfg, "biharmonic", tmp_path / "ev", prepared, features_dir=tmp / "features")
    n = cfg.evaluate.max_test_images - 3
    assert n % cfg.evaluate.batch_size
    read = on_curve_subset(load_eval_dir(tmp_path / "ev", "inpaint_biharmonic"), n)
    direct = evaluate.CurveEvaluator(cfg, n)(load_inpainter(cfg, "biharmonic", "cpu"))
    keys = {"fd": next(k for k in direct if k.startswith("fd_") and k != metric_key("fd", FACE_FD_BACKBONE)),
            "lpips": next(k for k in direct if k.startswith("lpips_"))}
    assert sorted(read) == ["fd", "hole_l1", "id_sim", "lpips", "psnr", "ssim"]
    for metric, value in read.items():
        assert value == pytest.approx(direct[keys.get(metric, metric)], rel=1e-5), metric
