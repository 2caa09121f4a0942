"""faceinpaint.metrics against formulas computed another way (PAPER.md sec. 6, 7)."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import scipy.ndimage
import scipy.stats
import torch
from skimage.metrics import structural_similarity

from faceinpaint.classical import BiharmonicInpainter, inpaint_biharmonic_batch
from faceinpaint.metrics import (
    AREA_BIN_LABELS,
    DOES_NOT_HOLD,
    HOLDS,
    IDENTITY_NETWORK,
    INCONCLUSIVE,
    SSIM_SETTINGS,
    area_bin,
    bootstrap_counts,
    fd_bootstrap_distribution,
    frechet_distance,
    paired_bootstrap,
    paired_interval_fd,
    half_sample_counts,
    half_sample_interval,
    exact_fd,
    fd_half_samples,
    psnr,
    ssim,
    verdict,
)


def _images(seed: int, n: int = 3, size: int = 32) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g) * 2 - 1


# ------------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_matches_its_formula():
    target = _images(0)
    pred = (target + 0.1 * torch.randn(target.shape, generator=torch.Generator().manual_seed(1))).clamp(-1, 1)
    t = (target.double().numpy() + 1) / 2
    p = (pred.double().numpy() + 1) / 2
    mse = ((p - t) ** 2).reshape(len(t), -1).mean(axis=1)
    np.testing.assert_allclose(psnr(pred, target), 10 * np.log10(1.0 / mse), rtol=1e-12)


def test_psnr_scores_the_clipped_image():
    target = _images(2)
    overshoot = target.clone()
    overshoot[:, :, :4, :4] = 1.7  # a network may overshoot; any saved image is clipped
    clipped = overshoot.clamp(-1, 1)
    np.testing.assert_array_equal(psnr(overshoot, target), psnr(clipped, target))


def _ssim_wang(a: np.ndarray, b: np.ndarray) -> float:
    """SSIM of Wang et al. 2004 from its equations: Gaussian window sigma 1.5 (11 taps),
    population statistics, C1 = (0.01 L)^2, C2 = (0.03 L)^2 with L = 1, mean over the map
    without the 5-pixel border the window cannot fill, averaged over RGB channels."""
    c1, c2 = 0.01**2, 0.03**2

    def blur(x):
        return scipy.ndimage.gaussian_filter(x, sigma=1.5, truncate=3.5)

    values = []
    for ch in range(a.shape[-1]):
        x, y = a[..., ch], b[..., ch]
        mx, my = blur(x), blur(y)
        vx, vy, cxy = blur(x * x) - mx**2, blur(y * y) - my**2, blur(x * y) - mx * my
        s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
        values.append(s[5:-5, 5:-5].mean())
    return float(np.mean(values))


def test_ssim_identical_shifted_and_reference():
    target = _images(3, n=2)
    assert np.allclose(ssim(target, target), 1.0)
    shifted = torch.roll(target, shifts=2, dims=3)
    values = ssim(shifted, target)
    assert (values < 1.0).all()
    t = ((target.double() + 1) / 2).permute(0, 2, 3, 1).numpy()
    s = ((shifted.double() + 1) / 2).permute(0, 2, 3, 1).numpy()
    direct = [
        structural_similarity(si, ti, data_range=1.0, channel_axis=-1, gaussian_weights=True, sigma=1.5,
                              use_sample_covariance=False, win_size=11)
        for si, ti in zip(s, t)
    ]
    np.testing.assert_allclose(values, direct, rtol=1e-12)
    np.testing.assert_allclose(values, [_ssim_wang(si, ti) for si, ti in zip(s, t)], rtol=1e-9)
    assert SSIM_SETTINGS["win_size"] == 11 and SSIM_SETTINGS["sigma"] == 1.5


def test_area_bins():
    assert area_bin(0.0) == "0-10%"
    assert area_bin(0.1) == "0-10%"
    assert area_bin(0.1001) == "10-20%"
    assert area_bin(0.55) == "50-60%"
    assert area_bin(0.75) == ">60%"
    assert AREA_BIN_LABELS == ("0-10%", "10-20%", "20-30%", "30-40%", "40-50%", "50-60%")
    with pytest.raises(ValueError):
        area_bin(1.5)


# ---------------------------------------------------------------------------- Frechet distance


def _with_moments(z: np.ndarray, mean: np.ndarray, var: np.ndarray) -> np.ndarray:
    """Samples whose sample mean and (N - 1)-normalised covariance are exactly ``mean`` and
    ``diag(var)``: whiten ``z`` exactly, then scale and shift."""
    z = z - z.mean(axis=0)
    w, v = np.linalg.eigh(np.cov(z, rowvar=False))
    z = z @ v @ np.diag(w**-0.5) @ v.T
    return mean + z * np.sqrt(var)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    rng = np.random.default_rng(0)
    d = 6
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    s1, s2 = rng.uniform(0.2, 3.0, d), rng.uniform(0.2, 3.0, d)
    a = _with_moments(rng.normal(size=(400, d)), mu1, s1)
    b = _with_moments(rng.normal(size=(400, d)), mu2, s2)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum(s1 + s2 - 2 * np.sqrt(s1 * s2))
    assert frechet_distance(a, b) == pytest.approx(expected, rel=1e-9)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)


def _frechet_by_eigh(a: np.ndarray, b: np.ndarray) -> float:
    """Tr (C_a C_b)^(1/2) = sum of sqrt(eig(C_a^(1/2) C_b C_a^(1/2))), a symmetric problem."""
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = scipy.linalg.eigh(ca)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    tr_sqrt = np.sqrt(np.clip(scipy.linalg.eigvalsh(root @ cb @ root), 0, None)).sum()
    return float(np.sum((a.mean(0) - b.mean(0)) ** 2) + np.trace(ca) + np.trace(cb) - 2 * tr_sqrt)


def test_frechet_distance_matches_a_symmetric_eigen_computation():
    rng = np.random.default_rng(1)
    mix = rng.normal(size=(20, 20))
    a = rng.normal(size=(300, 20)) @ mix
    b = (rng.normal(size=(300, 20)) + 0.4) @ (mix + 0.3 * rng.normal(size=(20, 20)))
    assert frechet_distance(a, b) == pytest.approx(_frechet_by_eigh(a, b), rel=1e-9)


@pytest.mark.parametrize("n, d", [(120, 16), (40, 64)])  # more images than features, and fewer
def test_fd_bootstrap_resamples_equal_explicit_resamples(n, d):
    rng = np.random.default_rng(2)
    real = rng.normal(size=(n, d))
    fake = 0.8 * real + 0.5 * rng.normal(size=(n, d)) + 0.2
    fast = fd_bootstrap_distribution(real, fake, n=4, seed=5)
    for value, counts in zip(fast, bootstrap_counts(n, 4, 5)):
        idx = np.repeat(np.arange(n), counts)
        reference = _frechet_by_eigh(real[idx], fake[idx]) if n > d else frechet_distance(real[idx], fake[idx])
        assert value == pytest.approx(reference, rel=1e-6)


def test_paired_fd_interval_prefers_the_closer_model():
    rng = np.random.default_rng(3)
    real = rng.normal(size=(100, 8))
    close = real + 0.2 * rng.normal(size=real.shape)
    far = real + 0.2 * rng.normal(size=real.shape) + 0.8
    estimate, lo, hi = paired_interval_fd(real, close, far, n=200, seed=0)
    assert estimate == pytest.approx(frechet_distance(real, close) - frechet_distance(real, far), rel=1e-6)
    assert lo <= estimate <= hi < 0
    assert verdict(lo, hi, higher_is_better=False) == HOLDS


def test_exact_fd_and_half_samples_equal_explicit_subsets():
    rng = np.random.default_rng(4)
    real, fake = rng.normal(size=(60, 80)), rng.normal(size=(60, 80)) + 0.1  # fewer images than features
    full = exact_fd(real, fake)
    for value, row in zip(fd_half_samples(real, fake, n=3, seed=1), half_sample_counts(60, 3, 1)):
        idx = np.flatnonzero(row)
        assert len(idx) == 30
        assert value == pytest.approx(_fd_by_eigvals(real[idx], fake[idx]), rel=1e-6)
    assert full == pytest.approx(_fd_by_eigvals(real, fake), rel=1e-6)


def _fd_by_eigvals(a, b):  # FD by the eigenvalues of C_a C_b (exact at any rank)
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    eig = np.linalg.eigvals(ca @ cb).real.clip(min=0)
    return float(((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca) + np.trace(cb) - 2 * np.sqrt(eig).sum())


def test_fd_difference_interval_covers_the_expected_difference_where_n_is_below_d():
    """Synthetic paired features, 150 images of 200-d features: FD at this N is biased far from its
    population value, and a percentile interval of resamples misses its own estimate; the
    half-sample interval contains its estimate and covers the expected FD difference at N images
    (measured on fresh draws) at about its nominal 95%."""
    d, n = 200, 150

    def draw(rng):
        x = rng.normal(size=(n, d))
        shift = np.zeros(d)
        shift[:3] = 1.0
        return x, 0.7 * x + 0.75 * rng.normal(size=(n, d)), 0.6 * x + 0.8 * rng.normal(size=(n, d)) + shift

    def difference(x, a, b):
        return exact_fd(x, a) - exact_fd(x, b)

    truth = np.mean([difference(*draw(np.random.default_rng(100 + k))) for k in range(40)])
    covered, outside_percentile = 0, 0
    trials = 24
    for t in range(trials):
        x, a, b = draw(np.random.default_rng(1000 + t))
        estimate, lo, hi = paired_interval_fd(x, a, b, n=150, seed=t)
        assert lo <= estimate <= hi
        covered += lo <= truth <= hi
        resampled = fd_bootstrap_distribution(x, a, 150, t) - fd_bootstrap_distribution(x, b, 150, t)
        p_lo, p_hi = np.percentile(resampled, [2.5, 97.5])
        outside_percentile += not (p_lo <= estimate <= p_hi)
    assert covered >= 0.8 * trials, (covered, trials)
    assert outside_percentile >= trials // 2  # the biased route this replaces


def test_half_sample_interval_by_hand():
    values = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    lo, hi = half_sample_interval(10.0, values, n_items=10, confidence=0.5)  # halves: factor 1
    dev = values - 3.0
    assert (lo, hi) == pytest.approx((10.0 - np.percentile(dev, 75), 10.0 - np.percentile(dev, 25)))


# -------------------------------------------------------------------------- paired bootstrap


def test_paired_bootstrap_covers_the_true_mean_about_95_percent():
    true_mean, trials = 0.3, 200
    covered = 0
    for seed in range(trials):
        diff = np.random.default_rng(1000 + seed).normal(true_mean, 1.0, 60)
        _, lo, hi = paired_bootstrap(diff, n=400, seed=seed)
        covered += lo <= true_mean <= hi
    # Binomial sd at 95% over 200 trials is 1.5 points; the percentile bootstrap runs a little
    # below nominal at n = 60.
    assert 0.88 <= covered / trials <= 0.99


def test_paired_bootstrap_shift_pairs_and_scipy():
    rng = np.random.default_rng(4)
    b = rng.normal(30.0, 2.0, 200)
    a = b + rng.normal(1.0, 0.5, 200)  # clearly better, paired image for image
    estimate, lo, hi = paired_bootstrap(a, b, n=2000, seed=0)
    assert estimate == pytest.approx(np.mean(a - b))
    assert 0 < lo < estimate < hi
    assert (estimate, lo, hi) == paired_bootstrap(a - b, n=2000, seed=0)
    ref = scipy.stats.bootstrap((a - b,), np.mean, n_resamples=2000, method="percentile", random_state=1).confidence_interval
    assert lo == pytest.approx(ref.low, abs=0.02) and hi == pytest.approx(ref.high, abs=0.02)
    median, _, _ = paired_bootstrap(a - b, n=200, seed=0, statistic=np.median)
    assert median == pytest.approx(np.median(a - b))


def test_paired_bootstrap_rejects_infinite_differences():
    with pytest.raises(ValueError, match="inf"):
        paired_bootstrap(np.array([1.0, np.inf, 2.0]), n=10)


def test_verdicts():
    assert verdict(0.1, 0.5, higher_is_better=True) == HOLDS
    assert verdict(-0.5, -0.1, higher_is_better=True) == DOES_NOT_HOLD
    assert verdict(-0.1, 0.1, higher_is_better=True) == INCONCLUSIVE
    assert verdict(-3.0, -1.0, higher_is_better=False) == HOLDS
    assert verdict(1.0, 3.0, higher_is_better=False) == DOES_NOT_HOLD
    assert verdict(-1.0, 0.0, higher_is_better=False) == INCONCLUSIVE
    with pytest.raises(ValueError):
        verdict(1.0, 0.0, higher_is_better=True)


# ----------------------------------------------------------------------- classical inpainting


def _ramp(size: int = 24) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(-0.8, 0.8, size), torch.linspace(-0.6, 0.9, size), indexing="ij")
    return torch.stack([x, y, 0.5 * x - 0.3 * y + 0.1])[None].double()


def test_biharmonic_fill_keeps_known_pixels_and_reproduces_a_ramp():
    image = _ramp().repeat(2, 1, 1, 1)
    mask = torch.zeros(2, 1, 24, 24, dtype=torch.float64)
    mask[0, :, 8:15, 6:13] = 1
    mask[1, :, 3:7, 14:20] = 1
    damaged = image * (1 - mask)
    out = inpaint_biharmonic_batch(damaged, mask)
    known = (mask == 0).expand_as(image)
    assert torch.equal(out[known], damaged[known])
    hole = ~known
    # A linear function has zero discrete biharmonic, so the fill is the ramp itself.
    assert (out[hole] - image[hole]).abs().max() < 1e-6


def test_biharmonic_inpainter_follows_the_model_interface():
    image = _images(5, n=2, size=16)
    mask = torch.zeros(2, 1, 16, 16)
    mask[:, :, 4:9, 5:10] = 1
    damaged = image * (1 - mask)
    result = BiharmonicInpainter()(damaged, mask)
    assert result["composite"].dtype == image.dtype and result["composite"].shape == image.shape
    assert torch.equal(result["composite"] * (1 - mask), damaged * (1 - mask))
    assert not torch.equal(result["composite"][:, :, 4:9, 5:10], damaged[:, :, 4:9, 5:10])


# ------------------------------------------------------------------------------ metric suite


def _suite_inputs():
    """Four real test photos at 64x64 with their evaluation squares, two with an irregular mask."""
    from pathlib import Path

    from faceinpaint.config import load_config
    from faceinpaint.data import load_face, to_tensor_image
    from faceinpaint.masks import load_mask_file, square_masks

    crop_box = load_config().data.crop_box
    files = sorted(Path("data/celeba/test").glob("celeb_1*/*.jpg"))[:4]
    original = torch.stack([to_tensor_image(load_face(f, crop_box, 64)) for f in files])
    ids = [f"{f.parent.name}/{f.name}" for f in files]
    square_mask = torch.from_numpy(square_masks(64)).float()[:4, None]  # image i has square i % 10
    irregular = load_mask_file("data/masks/irregular/04000.png", 64)
    irregular_mask = torch.from_numpy(irregular).float()[None, None].expand(2, 1, 64, 64)
    return original, ids, square_mask, irregular_mask


def _identity_embedder():
    from faceinpaint.config import load_config
    from faceinpaint.data import identity_box_fraction
    from faceinpaint.pretrained import IdentityEmbedder, load_face_recognition

    return IdentityEmbedder(load_face_recognition(), identity_box_fraction(load_config()))


def _check_suite(fid, tmp_path):
    """Every per-image row and the summary equal the metrics computed one by one, and what the
    evaluate stage writes the report reads back."""
    from faceinpaint.metrics import MetricSuite, _ResampledFrechet, metric_key
    from faceinpaint.pretrained import lpips_metric
    from faceinpaint.evalformat import figure_sample_indices, load_eval_dir, samples_from_batch, write_eval_outputs

    original, ids, square_mask, irregular_mask = _suite_inputs()
    lpips_net, embedder = lpips_metric("efficientnet_lite0"), _identity_embedder()
    suite = MetricSuite(lpips_net, embedder, fid)
    composite = inpaint_biharmonic_batch(original * (1 - square_mask), square_mask)
    suite.update(original[:2], composite[:2], square_mask[:2], ids[:2], [0, 1], "square")
    suite.update(original[2:], composite[2:], square_mask[2:], ids[2:], [2, 3], "square")
    irregular_composite = inpaint_biharmonic_batch(original[:2] * (1 - irregular_mask), irregular_mask)
    suite.update(original[:2], irregular_composite, irregular_mask, ids[:2], [4000, 4000], "irregular")

    rows = suite.rows()
    square = rows[rows["mask_set"] == "square"]
    np.testing.assert_allclose(square["psnr"], psnr(composite, original))
    np.testing.assert_allclose(square["ssim"], ssim(composite, original))
    with torch.no_grad():
        np.testing.assert_allclose(square["lpips"], lpips_net(composite, original).numpy(), rtol=1e-5)
        cos = (embedder(composite) * embedder(original)).sum(dim=1).numpy()
        real_feats, fake_feats = fid(original).double().numpy(), fid(composite).double().numpy()
    np.testing.assert_allclose(square["id_sim"], cos, rtol=1e-5)
    np.testing.assert_allclose(square["hole_fraction"], square_mask.mean(dim=(1, 2, 3)).numpy())
    for i in range(len(square)):  # hole L1 on the [0, 1] scale: mean |difference| over hole pixels and channels
        hole = square_mask[i, 0].bool()
        by_hand = ((composite[i].double() - original[i].double()).abs() / 2)[:, hole].mean().item()
        assert square["hole_l1"].iloc[i] == pytest.approx(by_hand, rel=1e-9)
    assert (square["area_bin"] == "0-10%").all()
    irregular = rows[rows["mask_set"] == "irregular"]
    assert len(irregular) == 2 and irregular["area_bin"].iloc[0] == area_bin(float(irregular_mask[0].mean()))
    assert irregular["hole_fraction"].iloc[0] > square["hole_fraction"].max()

    summary = suite.summary("square")
    fd_key = metric_key("fd", fid.name)
    assert summary["backbones"] == {"fd": fid.name, "lpips": "lpips-efficientnet_lite0-unitweights", "id": IDENTITY_NETWORK}
    # Four images: rank-deficient covariances, where pytorch-fid regularises; the exact value
    # comes from the Gram-matrix route (a resample that counts every image once).
    exact_fd = _ResampledFrechet(real_feats, fake_feats)(np.ones(4, np.int64))
    assert summary[fd_key] == pytest.approx(exact_fd, rel=1e-4)
    assert summary["lpips_efficientnet_lite0-unitweights"] == pytest.approx(square["lpips"].mean())
    assert summary["n_images"] == 4 and summary["psnr"] == pytest.approx(square["psnr"].mean())
    assert summary["hole_l1"] == pytest.approx(square["hole_l1"].mean())
    with torch.no_grad():  # the face-embedding FD: identity embeddings of the same square-set images
        face_real, face_fake = embedder(original).double().numpy(), embedder(composite).double().numpy()
    assert summary["fd_faceapi-resnet29"] == pytest.approx(frechet_distance(face_real, face_fake), rel=1e-6)

    summary.update(model="biharmonic", resolution=64, square_boxes=[[0, 0, 8, 8]] * 10, training={})
    pick = figure_sample_indices(4, 2)
    samples = samples_from_batch([ids[i] for i in pick], pick, original[pick], square_mask[pick], composite[pick])
    write_eval_outputs(tmp_path / "biharmonic", rows, summary, suite.features("square"), samples)
    back = load_eval_dir(tmp_path / "biharmonic", "inpaint_biharmonic")
    assert back.value("fd") == summary[fd_key]
    _, real, fake = back.sorted_features()
    assert _ResampledFrechet(real, fake)(np.ones(4, np.int64)) == pytest.approx(exact_fd, rel=1e-5)


def test_metric_suite_on_real_photos_and_networks(tmp_path):
    # FD over the 128-d identity embeddings: the suite takes any N x D extractor, and this keeps
    # pytorch-fid's 1280 x 1280 matrix square root (about 35 s of CPU) out of the default run.
    fid = _identity_embedder()
    fid.name = "faceapi-recognition-embedding"
    _check_suite(fid, tmp_path)


@pytest.mark.slow
def test_metric_suite_with_the_fid_backbone(tmp_path):
    from faceinpaint.pretrained import fid_feature_extractor

    _check_suite(fid_feature_extractor("efficientnet_lite0"), tmp_path)


def test_hole_psnr_and_l1_by_hand_on_a_small_image():
    """A 2 x 2 image with a two-pixel hole, every number worked out by hand on the [0, 1] scale."""
    from faceinpaint.metrics import mean_abs_error, psnr_hole

    target = torch.zeros(1, 3, 2, 2)  # 0.5 everywhere on the [0, 1] scale
    pred = target.clone()
    pred[0, :, 0, 0] = 0.5   # 0.75: error 0.25 in all three channels
    pred[0, 0, 0, 1] = -1.0  # 0.0: error 0.5 in the red channel only
    pred[0, :, 1, 1] = 0.2   # 0.6, but a known pixel: counts for the whole image only
    mask = torch.zeros(1, 1, 2, 2)
    mask[0, 0, 0, :] = 1.0   # the hole: the top row
    # hole: six values, squared errors 3 x 0.0625 + 0.25 = 0.4375, MSE = 0.4375 / 6
    assert psnr_hole(pred, target, mask)[0] == pytest.approx(10 * np.log10(6 / 0.4375), abs=1e-12)
    # hole L1: (3 x 0.25 + 0.5) / 6; whole-image L1: (1.25 + 3 x 0.1) / 12
    assert mean_abs_error(pred, target, mask)[0] == pytest.approx(1.25 / 6, abs=1e-7)
    assert mean_abs_error(pred, target, torch.ones_like(mask))[0] == pytest.approx(1.55 / 12, abs=1e-7)
    # only the hole counts: changing a known pixel leaves the hole PSNR as it is, the whole-image PSNR not
    other = pred.clone()
    other[0, :, 1, 0] = 1.0
    assert psnr_hole(other, target, mask)[0] == psnr_hole(pred, target, mask)[0]
    assert psnr(other, target)[0] < psnr(pred, target)[0]
    assert psnr_hole(target, target, mask)[0] == np.inf
    assert np.isnan(psnr_hole(pred, target, torch.zeros_like(mask))[0])


def test_hole_psnr_equals_scikit_image_psnr_on_the_hole_pixels():
    from skimage.metrics import peak_signal_noise_ratio

    from faceinpaint.metrics import psnr_hole, to_unit_rgb

    pred, target = _images(1, 2, 16), _images(2, 2, 16)
    mask = (torch.rand(2, 1, 16, 16, generator=torch.Generator().manual_seed(3)) < 0.3).float()
    got = psnr_hole(pred, target, mask)
    p, t = to_unit_rgb(pred), to_unit_rgb(target)
    for i in range(2):
        hole = mask[i, 0].numpy() > 0.5
        assert got[i] == pytest.approx(peak_signal_noise_ratio(t[i][hole], p[i][hole], data_range=1.0), rel=1e-12)
