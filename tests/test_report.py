"""faceinpaint.report (and the evaluation format, tables, claims and figures it assembles) on a
synthetic evaluation tree where one model is clearly better."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from faceinpaint.metrics import (
    IDENTITY_NETWORK,
    PSNR_SETTINGS,
    SSIM_SETTINGS,
    area_bin,
    frechet_distance,
    metric_key,
)
from faceinpaint.evalformat import (
    FACE_FD,
    EvalFormatError,
    figure_sample_indices,
    load_eval_dir,
    samples_from_batch,
    write_eval_outputs,
)
from faceinpaint.figures import FIGURE_GAP_PX, FIGURE_HEADER_PX, FIGURE_PANEL_MIN_PX, figure_canvas_size
from faceinpaint.report import build_report

N_SQUARE, N_IRREGULAR_PER_BIN, D, K, SIZE = 40, 2, 6, 3, 16
BACKBONES = {"fd": "efficientnet_lite0-pool", "lpips": "lpips-efficientnet_lite0-unitweights", "id": IDENTITY_NETWORK}
IRREGULAR_FRACTIONS = (0.05, 0.15, 0.25, 0.35, 0.45, 0.55)
SHARED = np.random.default_rng(0)
REAL_FEATURES = SHARED.normal(size=(N_SQUARE, D))
ORIGINALS = SHARED.integers(0, 256, (K, SIZE, SIZE, 3), dtype=np.uint8)
HOLES = np.zeros((K, SIZE, SIZE), np.uint8)
HOLES[:, 5:10, 4:11] = 255
# Per-image values of the better model; its twin "variant2" differs by +-0.2 alternately,
# so the mean paired difference is exactly 0, and has features of the same quality.
BASE = {m: SHARED.normal(0, s, N_SQUARE + 6 * N_IRREGULAR_PER_BIN) for m, s in (("psnr", 1.0), ("ssim", 0.005), ("lpips", 0.01), ("id_sim", 0.01))}
TWIN_OFFSET = np.where(np.arange(len(BASE["psnr"])) % 2 == 0, 1.0, -1.0)


def _model(name: str, level: float, feature_shift: float, twin: bool = False, seed: int = 1) -> dict:
    """Per-image rows, features and samples of a model ``level`` steps from the best."""
    rng = np.random.default_rng(seed)
    ids = [f"celeb_{i % 7}/{i:04d}.jpg" for i in range(N_SQUARE)]
    square = [{"image_id": ids[i], "mask_set": "square", "mask_id": i % 10, "hole_fraction": 0.02 + 0.004 * (i % 10)} for i in range(N_SQUARE)]
    irregular = [
        {"image_id": ids[(b * N_IRREGULAR_PER_BIN + j) % N_SQUARE], "mask_set": "irregular", "mask_id": 1000 * b + j, "hole_fraction": f}
        for b, f in enumerate(IRREGULAR_FRACTIONS) for j in range(N_IRREGULAR_PER_BIN)
    ]
    rows = pd.DataFrame(square + irregular)
    rows["area_bin"] = [area_bin(f) for f in rows["hole_fraction"]]
    offset = 0.2 * TWIN_OFFSET if twin else 0.0
    rows["psnr"] = 35.0 - 3.0 * level - 4.0 * rows["hole_fraction"] + BASE["psnr"] + offset
    rows["ssim"] = 0.97 - 0.02 * level + BASE["ssim"] + 0.01 * offset
    rows["lpips"] = 0.05 + 0.02 * level + BASE["lpips"]
    rows["id_sim"] = 0.9 - 0.05 * level + BASE["id_sim"]
    rows["hole_l1"] = 0.05 + 0.01 * level + 0.1 * rows["hole_fraction"]
    # The twin's features are as close to the originals as the best model's, image for image.
    noise = np.random.default_rng(98 if twin else 99).normal(size=REAL_FEATURES.shape)
    composite = REAL_FEATURES + 0.2 * noise + feature_shift + 0.1 * rng.normal(size=noise.shape) * (level > 0)
    feats = {"image_id": np.array(ids), "composite": composite.astype(np.float32), "real": REAL_FEATURES.astype(np.float32)}
    sq = rows[rows["mask_set"] == "square"]
    summary = {
        "model": name, "mask_set": "square", "n_images": N_SQUARE, "resolution": SIZE,
        "psnr": float(sq["psnr"].mean()), "ssim": float(sq["ssim"].mean()), "id_sim": float(sq["id_sim"].mean()),
        metric_key("lpips", BACKBONES["lpips"]): float(sq["lpips"].mean()),
        metric_key("fd", BACKBONES["fd"]): frechet_distance(feats["real"], feats["composite"]),
        FACE_FD: 0.004 + 0.003 * level + 0.0001 * seed,
        "backbones": BACKBONES, "psnr_settings": PSNR_SETTINGS, "ssim_settings": SSIM_SETTINGS,
        "square_boxes": [[4, 5, 11, 10]] * 10,
        "training": {} if name == "biharmonic" else {name: {"images_seen": 12000 + seed, "train_time_s": 5400.0 + seed}},
    }
    fill = np.uint8(40 * seed % 256)
    composite_img = ORIGINALS.copy()
    composite_img[HOLES == 255] = fill
    damaged = ORIGINALS.copy()
    damaged[HOLES == 255] = 128
    samples = {"image_id": np.array(ids[:K]), "mask_id": np.arange(K, dtype=np.int64), "original": ORIGINALS,
               "damaged": damaged, "mask": HOLES, "composite": composite_img}
    return {"rows": rows, "summary": summary, "feats": feats, "samples": samples}


MODELS = {  # folder -> (level, feature shift, twin of "full", seed)
    "full": (0.0, 0.0, False, 1),
    "variant2": (0.0, 0.0, True, 2),
    "pconv": (1.0, 1.0, False, 3),
    "rfr": (1.3, 1.5, False, 4),
    "biharmonic": (2.0, 2.5, False, 5),
    "structure": (1.6, 2.0, False, 6),
}  # variant1 is not run


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    for name, (level, shift, twin, seed) in MODELS.items():
        m = _model(name, level, shift, twin, seed)
        write_eval_outputs(root / name, m["rows"], m["summary"], m["feats"], m["samples"])
    out = tmp_path_factory.mktemp("reports")
    written = build_report(root, out, n_bootstrap=300, n_bootstrap_fd=200, seed=0)
    return root, out, written


def test_tables_show_paper_and_our_numbers(report):
    root, out, _ = report
    table1 = (out / "table1.md").read_text()
    for number in ("33.058", "0.966", "67.956", "32.252", "0.948", "106.312", "36.733", "0.977", "15.077"):
        assert number in table1
    ours = json.loads((root / "full" / "summary.json").read_text())
    assert f"{ours['psnr']:.3f}" in table1 and f"{ours['ssim']:.4f}" in table1
    assert f"{ours['fd_efficientnet_lite0-pool']:.3f}" in table1
    ours_row = next(line for line in table1.splitlines() if line.startswith("| Ours "))
    assert f"| {ours[FACE_FD]:.5f} |" in ours_row and "FD (face)" in table1 and "`fd_faceapi-resnet29`" in table1
    for text in ("efficientnet_lite0-pool", "lpips-efficientnet_lite0-unitweights", "16x16", "win_size=11",
                 "sigma=1.5", "use_sample_covariance=False", "data_range=1.0", "inpaint_biharmonic",
                 "same network as the ID loss", "12.0k img / 1.50 h", "(4, 5, 11, 10)"):
        assert text in table1, text

    table2 = (out / "table2.md").read_text()
    for number in ("34.364", "0.959", "33.357", "36.239", "0.973", "20.534"):
        assert number in table2
    variant1 = next(line for line in table2.splitlines() if line.startswith("| Variant 1 "))
    assert "not run" in variant1 and "34.364" in variant1

    csv = pd.read_csv(out / "table1.csv").set_index("model")
    assert csv.loc["Ours", "psnr"] == pytest.approx(ours["psnr"])
    assert csv.loc["Ours", "fd_face"] == pytest.approx(ours[FACE_FD])
    assert csv.loc["Ours", "psnr_paper"] == 36.733 and csv.loc["PConv", "fid_paper"] == 67.956
    assert csv.loc["inpaint_biharmonic", "status"] == "ok" and np.isnan(csv.loc["inpaint_biharmonic", "psnr_paper"])
    assert pd.read_csv(out / "table2.csv").set_index("model").loc["Variant 1", "status"] == "not run"


def test_claim_verdicts(report):
    _, out, _ = report
    doc = json.loads((out / "claims.json").read_text())
    claims = {c["id"]: c for c in doc["claims"]}
    assert claims["C1"]["verdict"] == "holds"
    assert [(c["worse"], c["metric"]) for c in claims["C1"]["comparisons"]] == [
        ("PConv", "psnr"), ("PConv", "ssim"), ("PConv", "fd"), ("RFR", "psnr"), ("RFR", "ssim"), ("RFR", "fd")]
    for c in claims["C1"]["comparisons"]:
        assert c["verdict"] == "holds" and c["lo"] <= c["estimate"] <= c["hi"] and c["n_images"] == N_SQUARE
        assert (c["lo"] > 0) if c["metric"] != "fd" else (c["hi"] < 0)
    assert claims["C2"]["verdict"] == "not run"
    assert all(c["missing"] == ["Variant 1"] for c in claims["C2"]["comparisons"])
    assert claims["C3"]["verdict"] == "inconclusive"
    assert all(c["verdict"] == "inconclusive" for c in claims["C3"]["comparisons"])
    psnr_c3 = claims["C3"]["comparisons"][0]
    assert psnr_c3["estimate"] == pytest.approx(0.0, abs=1e-9) and psnr_c3["lo"] < 0 < psnr_c3["hi"]
    assert doc["classical_check"]["verdict"] == "holds"
    assert doc["n_resamples"] == 300 and doc["n_resamples_fd"] == 200

    md = (out / "claims.md").read_text()
    assert "## C1: Ours beats PConv and RFR on PSNR, SSIM and FID — **holds**" in md
    assert "**inconclusive**" in md and "not run (Variant 1)" in md


def _panel(img: np.ndarray, row: int, col: int, h: int, w: int) -> np.ndarray:
    """The image shown in grid cell (row, col), read at the centre of every upscaled pixel."""
    s = max(1, -(-FIGURE_PANEL_MIN_PX // min(h, w)))
    x0 = FIGURE_GAP_PX + col * (w * s + FIGURE_GAP_PX)
    y0 = FIGURE_HEADER_PX + FIGURE_GAP_PX + row * (h * s + FIGURE_GAP_PX)
    return img[y0 + s // 2 : y0 + h * s : s, x0 + s // 2 : x0 + w * s : s]


def test_figures_are_grids_of_the_evaluated_pixels(report):
    root, out, _ = report
    full = load_eval_dir(root / "full", "Ours")
    for figure, n_models in (("figure3", 3), ("figure5", 3)):
        with Image.open(out / f"{figure}.png") as im:
            assert im.format == "PNG"
            assert im.size == figure_canvas_size(K, n_models + 2, SIZE, SIZE)
            img = np.asarray(im.convert("RGB"))
        for row in range(K):
            damaged = full.samples["damaged"][row].copy()
            damaged[full.samples["mask"][row] == 255] = 255
            assert np.array_equal(_panel(img, row, 0, SIZE, SIZE), damaged)
            assert np.array_equal(_panel(img, row, 3, SIZE, SIZE), full.samples["composite"][row])  # Ours
            assert np.array_equal(_panel(img, row, n_models + 1, SIZE, SIZE), full.samples["original"][row])
    with Image.open(out / "figure5.png") as im:
        not_run = _panel(np.asarray(im.convert("RGB")), 0, 1, SIZE, SIZE)  # the Variant 1 column
    assert (not_run[0, 0] == 217).all()  # grey "not run" panel, no image


def test_stage1_table_and_figure_set_the_structure_reconstructor_against_biharmonic(report):
    root, out, _ = report
    stage1 = load_eval_dir(root / "structure", "Stage 1 (structure)")
    classical = load_eval_dir(root / "biharmonic", "inpaint_biharmonic")
    csv = pd.read_csv(out / "table_stage1.csv")
    assert csv["model"].tolist() == ["Stage 1 (structure)", "inpaint_biharmonic"]  # the classical row once
    assert csv.set_index("model").loc["Stage 1 (structure)", "fd"] == pytest.approx(stage1.value("fd"))
    assert csv.set_index("model").loc["inpaint_biharmonic", "fd"] == pytest.approx(classical.value("fd"))
    md = (out / "table_stage1.md").read_text()
    assert md.startswith("# Stage 1 alone") and f"{stage1.value('psnr'):.3f}" in md
    with Image.open(out / "figure_stage1.png") as im:
        assert im.size == figure_canvas_size(K, 4, SIZE, SIZE)  # damaged | stage 1 | biharmonic | original
        img = np.asarray(im.convert("RGB"))
    for row in range(K):
        assert np.array_equal(_panel(img, row, 1, SIZE, SIZE), stage1.samples["composite"][row])
        assert np.array_equal(_panel(img, row, 2, SIZE, SIZE), classical.samples["composite"][row])


def test_metrics_json_is_flat_and_numeric(report):
    _, out, _ = report
    metrics = json.loads((out / "metrics.json").read_text())
    assert all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in metrics.values())
    assert {"full.psnr", "full.ssim", "full.id_sim", "full.fd_efficientnet_lite0-pool",
            "full.lpips_efficientnet_lite0-unitweights"} <= set(metrics)
    assert not any(k.startswith("variant1.") for k in metrics)
    assert {k.split(".")[0] for k in metrics} == set(MODELS)


def test_irregular_bins(report):
    _, out, _ = report
    frame = pd.read_csv(out / "irregular_bins.csv")
    full = frame[frame["model"] == "Ours"].set_index("area_bin")
    assert list(full.index) == ["0-10%", "10-20%", "20-30%", "30-40%", "40-50%", "50-60%"]
    assert (full["n"] == N_IRREGULAR_PER_BIN).all()
    rows = _model("full", 0.0, 0.0)["rows"]
    expected = rows[(rows["mask_set"] == "irregular") & (rows["area_bin"] == "30-40%")]["psnr"].mean()
    assert full.loc["30-40%", "psnr"] == pytest.approx(expected)
    md = (out / "irregular_bins.md").read_text()
    assert "| Variant 1 | not run |" in md and "50-60%" in md
    with Image.open(out / "irregular_psnr_vs_area.png") as im:
        assert im.format == "PNG" and im.size == (600, 400)


def test_empty_eval_tree_reports_everything_as_not_run(tmp_path):
    written = build_report(tmp_path / "eval", tmp_path / "reports", n_bootstrap=10, n_bootstrap_fd=10)
    assert "figure3.png" not in written
    assert "not run" in (tmp_path / "reports" / "table1.md").read_text()
    assert {c["verdict"] for c in json.loads(written["claims.json"].read_text())["claims"]} == {"not run"}
    assert json.loads(written["metrics.json"].read_text()) == {}


def test_writer_rejects_what_the_report_could_not_read(tmp_path):
    m = _model("full", 0.0, 0.0)
    with pytest.raises(EvalFormatError, match="lack columns"):
        write_eval_outputs(tmp_path / "a", m["rows"].drop(columns="id_sim"), m["summary"], m["feats"], m["samples"])
    with pytest.raises(EvalFormatError, match="training"):
        write_eval_outputs(tmp_path / "a", m["rows"], {k: v for k, v in m["summary"].items() if k != "training"}, m["feats"], m["samples"])
    wrong = dict(m["feats"], image_id=np.array([f"other/{i}" for i in range(N_SQUARE)]))
    with pytest.raises(EvalFormatError, match="square-mask set"):
        write_eval_outputs(tmp_path / "a", m["rows"], m["summary"], wrong, m["samples"])
    with pytest.raises(EvalFormatError, match="uint8"):
        write_eval_outputs(tmp_path / "a", m["rows"], m["summary"], m["feats"], dict(m["samples"], composite=m["samples"]["composite"].astype(np.float32)))
    assert not (tmp_path / "a").exists()  # nothing written before every check passed

    write_eval_outputs(tmp_path / "b", m["rows"], m["summary"], m["feats"], m["samples"])
    back = load_eval_dir(tmp_path / "b", "Ours")
    pd.testing.assert_frame_equal(back.rows, m["rows"][back.rows.columns.tolist()], check_dtype=False)
    assert back.summary == json.loads(json.dumps(m["summary"]))
    assert np.array_equal(back.features["composite"], m["feats"]["composite"])
    (tmp_path / "b" / "features.npz").unlink()
    with pytest.raises(EvalFormatError, match="features.npz"):
        load_eval_dir(tmp_path / "b", "Ours")


def test_figures_refuse_models_shown_on_different_images(tmp_path):
    root = tmp_path / "eval"
    for name, seed in (("full", 1), ("pconv", 3)):
        m = _model(name, 0.0, 0.0, seed=seed)
        if name == "pconv":
            m["samples"]["mask_id"] = m["samples"]["mask_id"] + 1
        write_eval_outputs(root / name, m["rows"], m["summary"], m["feats"], m["samples"])
    with pytest.raises(EvalFormatError, match="same images and masks"):
        build_report(root, tmp_path / "reports", n_bootstrap=10, n_bootstrap_fd=10)


def test_samples_and_their_indices():
    indices = figure_sample_indices(1200, 6)
    assert len(set(indices)) == 6 and max(indices) < 1200
    assert sorted(i % 10 for i in indices) == list(range(6))  # six different squares
    assert figure_sample_indices(8, 4) == [0, 1, 2, 3]

    image = torch.rand(2, 3, 8, 8) * 2 - 1
    mask = torch.zeros(2, 1, 8, 8)
    mask[:, :, 2:5, 3:6] = 1
    samples = samples_from_batch(["a", "b"], [0, 1], image, mask, image)
    assert samples["mask"].dtype == np.uint8 and set(np.unique(samples["mask"])) == {0, 255}
    hole = samples["mask"] == 255
    assert (samples["damaged"][hole] == 128).all()  # 0 in [-1, 1] is mid-grey
    assert np.array_equal(samples["damaged"][~hole], samples["original"][~hole])
    assert np.array_equal(samples["original"], np.round((image.permute(0, 2, 3, 1).numpy() + 1) * 127.5).astype(np.uint8))


def test_loss_curves_png_draws_every_training_csv(tmp_path):
    from faceinpaint.figures import FIGURE_DPI, plot_loss_curves

    plots = tmp_path / "plots"
    plots.mkdir()
    steps = np.arange(25, 201, 25)
    pd.DataFrame({"step": steps, "epoch": steps / 600, "images_seen": steps * 8, "total": 1.0 / steps,
                  "lr/generator": 1e-4}).to_csv(plots / "train_pconv.csv", index=False)
    pd.DataFrame({"step": steps, "images_seen": steps * 16, "d_loss": np.linspace(1.4, 0.6, len(steps)),
                  "g_loss": np.linspace(-0.5, 2.0, len(steps))}).to_csv(plots / "train_stylegan.csv", index=False)
    pd.DataFrame({"step": [], "total": []}).to_csv(plots / "train_rfr.csv", index=False)  # no rows yet
    (plots / "notes.csv").write_text("step,x\n1,2\n")  # not a training curve
    out = tmp_path / "loss_curves.png"
    assert plot_loss_curves(plots, out) == ["pconv", "stylegan"]
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size == (round(2 * 4.2 * FIGURE_DPI), round(3.2 * FIGURE_DPI))


def test_learning_curves_draw_each_inpainter_and_biharmonic_on_the_curve_images(report, tmp_path):
    from faceinpaint.evalformat import on_curve_subset
    from faceinpaint.figures import learning_curves, plot_learning_curves, plot_prior_curve

    root, _, _ = report
    classical = load_eval_dir(root / "biharmonic", "inpaint_biharmonic")
    n = 7
    line = on_curve_subset(classical, n)
    rows = classical.rows[classical.rows["mask_set"] == "square"].iloc[:n]  # the first n test images
    assert len(rows) == n and line["psnr"] == pytest.approx(rows["psnr"].mean())
    assert line["id_sim"] == pytest.approx(rows["id_sim"].mean()) and line["hole_l1"] == pytest.approx(rows["hole_l1"].mean())
    keep = np.isin(classical.features["image_id"], rows["image_id"])
    assert line["fd"] == pytest.approx(frechet_distance(classical.features["real"][keep], classical.features["composite"][keep]))
    plots = tmp_path / "plots"
    plots.mkdir()
    points = pd.DataFrame({"images_seen": [2000, 4000], "step": [250, 500], "psnr": [30.0, 31.0],
                           "fd_efficientnet_lite0-pool": [9.0, 6.0], "fd_faceapi-resnet29": [0.02, 0.01]})
    points.to_csv(plots / "curve_pconv.csv", index=False)
    points.assign(psnr=[29.0, 30.5]).to_csv(plots / "curve_variant1.csv", index=False)
    pd.DataFrame({"images_seen": [2000], "step": [125], "fd_efficientnet_lite0-pool": [300.0],
                  "fd_faceapi-resnet29": [0.18], "fd_samples": [600]}).to_csv(plots / "curve_stylegan.csv", index=False)
    curves = learning_curves(plots, {"pconv": load_eval_dir(root / "pconv", "PConv")}, n)
    assert sorted(curves) == ["pconv", "variant1"]  # the prior has its own figure
    assert len(curves["pconv"]) == 3 and len(curves["variant1"]) == 2  # pconv's evaluation adds its 12,003 images
    assert plot_learning_curves(curves, tmp_path / "curves.png", classical, n) == ["pconv", "variant1"]
    assert plot_prior_curve(plots, tmp_path / "prior.png")
    for name in ("curves.png", "prior.png"):
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG"


def test_a_run_that_ends_between_curve_budgets_gets_its_final_point_from_its_evaluation(report):
    from faceinpaint.evalformat import FROM_EVALUATION, FROM_TRAINING, with_final_point

    root, _, _ = report
    pconv = load_eval_dir(root / "pconv", "PConv")  # trained on 12,003 images (the fixture's facts)
    n = 9
    curve = pd.DataFrame({"images_seen": [2000, 4000, 8000], "step": [250, 500, 1000], "psnr": [30.0, 31.0, 31.5],
                          "ssim": [0.9, 0.91, 0.92], "fd_efficientnet_lite0-pool": [9.0, 6.0, 5.0],
                          "fd_faceapi-resnet29": [0.02, 0.01, 0.009]})
    grown = with_final_point(curve, pconv, n)
    assert grown["source"].tolist() == [FROM_TRAINING] * 3 + [FROM_EVALUATION]
    pd.testing.assert_frame_equal(grown.iloc[:3][curve.columns], curve, check_dtype=False)  # the run's own points untouched
    final = grown.iloc[-1]
    assert final["images_seen"] == 12003 and np.isnan(final["step"]) and np.isnan(final["fd_faceapi-resnet29"])
    # computed here another way: the evaluation's first n square rows and their features
    sq = pconv.rows[pconv.rows["mask_set"] == "square"].iloc[:n]
    assert final["psnr"] == pytest.approx(sq["psnr"].mean()) and final["ssim"] == pytest.approx(sq["ssim"].mean())
    assert final["lpips_efficientnet_lite0-unitweights"] == pytest.approx(sq["lpips"].mean())
    index = {str(i): k for k, i in enumerate(pconv.features["image_id"])}
    keep = [index[str(i)] for i in sq["image_id"]]
    assert final["fd_efficientnet_lite0-pool"] == pytest.approx(
        frechet_distance(pconv.features["real"][keep], pconv.features["composite"][keep]))
    # a run that ended on a curve budget, and a model not evaluated, are left as they are
    on_budget = curve.assign(images_seen=[3001, 6002, 12003])
    assert len(with_final_point(on_budget, pconv, n)) == 3
    assert len(with_final_point(curve, None, n)) == 3


def test_last_segments_give_each_curves_latest_change_and_direction():
    from faceinpaint.claims import last_segments, verdicts_by_budget, verdicts_by_budget_markdown

    fd = "fd_efficientnet_lite0-pool"
    curves = {
        "PConv": pd.DataFrame({"images_seen": [8000, 2000, 4000], "psnr": [31.5, 30.0, 31.0], "ssim": [0.92, 0.90, 0.93],
                               fd: [5.5, 9.0, 6.0]}),  # unsorted on purpose: the last segment is 4k -> 8k
        "RFR": pd.DataFrame({"images_seen": [2000], "psnr": [30.0], "ssim": [0.9], fd: [9.0]}),  # one point: no segment
    }
    seg = last_segments(curves)
    assert seg["model"].tolist() == ["PConv"]
    row = seg.iloc[0]
    assert (row["from_images"], row["to_images"]) == (4000, 8000)
    assert row["psnr"] == pytest.approx(0.5) and row["ssim"] == pytest.approx(-0.01) and row["fd"] == pytest.approx(-0.5)
    assert row["improving"] == "psnr, fd"  # SSIM fell; FD is better lower
    page = verdicts_by_budget_markdown(verdicts_by_budget(curves, {}), 200, seg)
    assert "## Where each curve stands" in page and "| PConv | 4.0k -> 8.0k | +0.500 | -0.0100 | -0.500 | psnr, fd |" in page
    assert "| fd_efficientnet_lite0-pool change |" in page  # the FD column names its backbone


def test_report_page_holds_every_table_verbatim_and_the_budgets_of_the_evaluations(report):
    import re

    root, out, written = report
    page = written["README.md"].read_text()
    assert page.startswith("# Reproduction report")
    for name in ("table1.md", "table2.md", "table_stage1.md", "claims.md", "irregular_bins.md"):
        body = [line for line in (out / name).read_text().splitlines() if line and not line.startswith("#")]
        assert all(line in page for line in body), name  # the same text, so the same numbers
    # the budget table: one row per training run, numbers from the evaluation summaries
    rows = re.findall(r"^\| [^|]+ \| (\w+) \| ([\d,]+) \| ([\d.]+) min \|$", page, re.M)
    facts = {}
    for folder in MODELS:
        facts.update(json.loads((root / folder / "summary.json").read_text())["training"])
    assert rows and {run for run, _, _ in rows} == set(facts)
    for run, images, minutes in rows:
        assert int(images.replace(",", "")) == facts[run]["images_seen"]
        assert float(minutes) == pytest.approx(facts[run]["train_time_s"] / 60, abs=0.05)
    from faceinpaint.report import PAGE_FIGURES

    for _, name in PAGE_FIGURES:
        assert (f"]({name})" in page) == (out / name).is_file()


def test_report_page_states_the_training_mask_mix_with_its_ratio(report):
    from faceinpaint.report import report_page, training_masks_markdown

    root, out, _ = report
    text = training_masks_markdown(0.4, 0.1, 0.3)
    assert "our choice" in text and "probability 60%" in text and "probability 40%" in text and "0.1-0.3" in text
    results = {"PConv": load_eval_dir(root / "pconv", "PConv")}
    page = report_page(out, results, {"profile": "cpu"}, None, text)
    budgets_end = page.index("## Training budgets")
    assert page.index(text) > budgets_end and text not in report_page(out, results, {"profile": "cpu"})


def test_report_page_lists_every_deviation_with_its_reason(report):
    import importlib

    from faceinpaint.deviations import DEVIATIONS

    _, _, written = report
    page = written["README.md"].read_text()
    section = page.split("\n## Deviations from the paper\n", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in section.splitlines() if line.startswith("| ") and not line.startswith("| |")]
    assert len(rows) == len(DEVIATIONS) and len({d.topic for d in DEVIATIONS}) == len(DEVIATIONS)
    for i, (row, d) in enumerate(zip(rows, DEVIATIONS), start=1):
        assert all("|" not in text and "\n" not in text and text.strip() for text in (d.topic, d.here, d.reason, d.where))
        assert row == f"| {i} | {d.topic} | {d.here} | {d.reason} | `{d.where}` |"
        module, _, attribute = d.where.partition(":")  # the code it names exists
        assert getattr(importlib.import_module(module), attribute) if attribute else importlib.import_module(module)


def _measured_levels(resolution: int, base_width: int, max_width: int, attention_levels, monkeypatch) -> list[dict]:
    """One forward pass of a texture generator on one image with a square hole: each encoder
    level's stride, map and channels from forward hooks, and which ACM level's scores fill which
    map, from the tensors the ACM and ATN are called with (identity, not shape)."""
    from faceinpaint import texture

    gen = texture.TextureGenerator(resolution, base_width, max_width, attention_levels)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    hooks = [conv.register_forward_hook(lambda module, args, out: seen.append((args[0], out))) for conv in gen.encoder]
    level_of = lambda t: next(k for k, (_, out) in enumerate(seen, start=1) if out is t)  # noqa: E731
    scored: dict[int, int] = {}  # id of the AttentionScores -> level it was computed on
    filled: dict[int, int] = {}  # target level -> score level
    compute, transfer = texture.compute_attention, texture.transfer_attention

    def spy_compute(features, holes, *args):
        out = compute(features, holes, *args)
        scored[id(out)] = level_of(features)
        return out

    def spy_transfer(features, attention, holes):
        filled[level_of(features)] = scored[id(attention)]
        return transfer(features, attention, holes)

    mask = torch.zeros(1, 1, resolution, resolution)
    mask[..., resolution // 4: resolution // 2, resolution // 4: resolution // 2] = 1
    with monkeypatch.context() as patch, torch.no_grad():
        patch.setattr(texture, "compute_attention", spy_compute)
        patch.setattr(texture, "transfer_attention", spy_transfer)
        gen(torch.zeros(1, 3, resolution, resolution), mask)
    for h in hooks:
        h.remove()
    levels = []
    for level, (x, out) in enumerate(seen, start=1):
        _, channels, height, width = out.shape
        role = (f"filled with s^{filled[level]}" if level in filled else
                f"ACM: s^{level}, fills level{'s' if list(filled.values()).count(level) > 1 else ''} "
                + ", ".join(str(t) for t, s in filled.items() if s == level) if level in filled.values() else "—")
        levels.append({"stride": x.shape[-1] // width, "map": f"{height}x{width}", "channels": channels,
                       "cell": f"{resolution // height}x{resolution // width} px", "role": role})
    return levels


@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_texture_level_table_is_what_the_generator_computes(tmp_path, monkeypatch, profile):
    """PAPER.md sec. 6a: the page states the level sizes of the profile; they equal the shapes of
    one forward pass at the profile's resolution and widths, for every attention setting."""
    from conftest import ROOT
    from faceinpaint.config import load_config
    from faceinpaint.models import MODELS, TEXTURE_MODELS

    cfg = load_config(ROOT / "params.yaml", profile)
    res, widths = cfg.resolution, (cfg.texture.base_width, cfg.texture.max_width)
    written = build_report(tmp_path / "eval", tmp_path / "reports", n_bootstrap=10, n_bootstrap_fd=10,
                           profile=profile, resolution=res, texture_widths=widths)
    section = written["README.md"].read_text().split("\n## Texture generator levels\n", 1)[1].split("\n## ", 1)[0]
    header, _, *rows = [[c.strip() for c in line.strip("|").split("|")] for line in section.splitlines() if line.startswith("|")]
    assert f"at {res}x{res}" in section and len(rows) == 6
    for model in TEXTURE_MODELS:
        measured = _measured_levels(res, *widths, MODELS[model].extras["attention_levels"], monkeypatch)
        column = next(k for k, name in enumerate(header) if MODELS[model].display in name.split("Attention: ")[-1].split(" / "))
        assert len(measured) == len(rows)
        for level, (row, m) in enumerate(zip(rows, measured), start=1):
            assert row[:5] == [str(level), str(m["stride"]), m["map"], str(m["channels"]), m["cell"]], (model, level)
            assert row[column] == m["role"], (model, level)
    if profile != "paper":  # PAPER.md sec. 6a: below 256, levels 4-6 stay at least 4x4
        assert all(int(row[2].split("x")[0]) >= 4 for row in rows[3:])


def test_claims_against_budget_count_the_comparisons_won_at_each_shared_budget():
    from faceinpaint.claims import verdicts_by_budget, verdicts_by_budget_markdown

    def curve(budgets, psnr, ssim, fd):
        return pd.DataFrame({"images_seen": budgets, "step": [b // 8 for b in budgets], "psnr": psnr, "ssim": ssim,
                             "fd_efficientnet_lite0-pool": fd, "fd_faceapi-resnet29": [0.01] * len(budgets)})

    curves = {
        "Variant 1": curve([2000, 4000, 8000], [30.0, 31.0, 32.0], [0.90, 0.92, 0.93], [9.0, 6.0, 5.0]),
        # 2k: wins all three (FD lower is better); 4k: PSNR only; 8k: no point
        "Variant 2": curve([2000, 4000], [30.5, 31.5], [0.91, 0.91], [8.0, 7.0]),
        "Ours": curve([2000], [29.0], [0.89], [10.0]),
        "PConv": curve([2000], [31.0], [0.95], [3.0]),
    }
    classical = {"psnr": 30.2, "ssim": 0.905, "fd": 4.0}
    frame = verdicts_by_budget(curves, classical)
    assert frame["images_seen"].tolist() == [2000, 4000, 8000]
    by = frame.set_index("images_seen")
    assert by.loc[2000, "C2"] == "ahead 3/3" and by.loc[4000, "C2"] == "mixed 1/3" and by.loc[8000, "C2"] == "not run"
    assert by.loc[2000, "C3"] == "behind 0/3"  # Ours loses to Variant 2 on all three
    assert by.loc[2000, "C1"] == "not run"  # RFR has no curve
    # 2k: Variant 1 (below on both), Variant 2 (above on both), Ours (below), PConv (above) -> 4 of 8
    assert by.loc[2000, "Check"] == "mixed 4/8 (Variant 1, Variant 2, Ours, PConv)"
    assert by.loc[8000, "Check"] == "ahead 2/2 (Variant 1)"  # 32.0 > 30.2 and 0.93 > 0.905
    page = verdicts_by_budget_markdown(frame, 200)
    assert "| 2.0k | not run | ahead 3/3 | behind 0/3 |" in page and "first 200 test images" in page
    assert verdicts_by_budget_markdown(verdicts_by_budget({}, classical), 200).endswith("No learning-curve points yet.\n")


def test_prior_checks_keep_one_row_per_sitting_and_run(tmp_path):
    """The stylegan stage's end-of-sitting checks: a row per budget, a repeated budget replaces its
    row, another run's rows stay but the figure reads only the newest run's."""
    from faceinpaint.figures import plot_prior_curve, prior_checks
    from faceinpaint.stages import PRIOR_CHECKS, append_prior_check

    path = tmp_path / PRIOR_CHECKS
    fd, face = "fd_efficientnet_lite0-pool", "fd_faceapi-resnet29"
    check = lambda a, b: {fd: a, face: b, "fd_samples": 1200}  # noqa: E731
    append_prior_check(path, "old", 100, 1600, check(300.0, 0.2))
    append_prior_check(path, "run1", 4211, 67376, check(69.67, 0.0713))
    append_prior_check(path, "run1", 8000, 128000, check(45.70, 0.0459))
    append_prior_check(path, "run1", 8000, 128000, check(45.71, 0.0460))  # the stage re-run at the same budget
    append_prior_check(path, "run1", 10603, 169648, check(38.76, 0.0380))
    table = pd.read_csv(path)
    assert list(table.columns[:3]) == ["run", "step", "images_seen"]
    assert table["run"].tolist() == ["run1", "run1", "run1", "old"]
    assert table["images_seen"].tolist() == [67376, 128000, 169648, 1600]
    assert table[fd].tolist() == [69.67, 45.71, 38.76, 300.0]
    shown = prior_checks(tmp_path)
    assert shown["images_seen"].tolist() == [67376, 128000, 169648] and set(shown["run"]) == {"run1"}

    append_prior_check(path, "old", 200, 3200, check(250.0, 0.15))  # the old identity trains again: now newest
    assert prior_checks(tmp_path)["images_seen"].tolist() == [1600, 3200]
    pd.DataFrame({"images_seen": [2000], "step": [125], fd: [300.0], face: [0.18],
                  "fd_samples": [600]}).to_csv(tmp_path / "curve_stylegan.csv", index=False)
    assert plot_prior_curve(tmp_path, tmp_path / "prior.png")
    with Image.open(tmp_path / "prior.png") as im:
        assert im.format == "PNG"


def test_report_page_leads_with_the_verdicts_and_defines_each_metric_once(report):
    """The page: the claims' verdicts first (one line each, with the numbers of claims.json),
    then the tables, then the budgets; every column definition of the tables once, at the end."""
    import re

    from faceinpaint.claims import _comparison_row

    _, out, written = report
    page = written["README.md"].read_text()
    claims = json.loads((out / "claims.json").read_text())
    order = [page.index(h) for h in ("\n## What was found\n", "\n## Table 1", "\n## Table 2", "\n## Claims of PAPER.md",
                                     "\n## Figures\n", "\n## Training budgets\n", "\n## How it is measured\n")]
    assert order == sorted(order)
    found = page.split("\n## What was found\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in found.splitlines() if line.startswith("- **")]
    everything = (*claims["claims"], {"id": "Check", **claims["classical_check"]})
    assert len(lines) == len(everything)
    for line, claim in zip(lines, everything):
        assert line.startswith(f"- **{claim['id']}** {claim['statement']}: **{claim['verdict']}**")
        for c in claim["comparisons"]:
            name, _, diff, interval, _ = _comparison_row(c)
            assert f"{c['metric']} {diff} {interval}" in line.split(f"{name}: ", 1)[1].split(";", 1)[0]
    # each caption bullet of the tables appears once on the page, under "How it is measured"
    measured = page.split("\n## How it is measured\n", 1)[1].split("\n## ", 1)[0]
    for name in ("table1.md", "table2.md", "table_stage1.md"):
        for bullet in re.findall(r"^- .*$", (out / name).read_text(), re.M):
            assert page.count(bullet) == 1 and bullet in measured, bullet
    assert page.count("- PSNR:") == 1 and page.count("- SSIM:") == 1
    assert "Paired over the test images" in measured  # the claims' method, once, with the definitions
