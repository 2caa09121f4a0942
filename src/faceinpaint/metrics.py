"""Evaluation metrics and paired bootstrap tests (the classical fill is in :mod:`faceinpaint.classical`).

PAPER.md sec. 6 names the metrics (PSNR, SSIM of Wang et al. 2004, FID of Heusel et al. 2017);
sec. 6a asks that the SSIM settings be stated and identical for every model; sec. 7 lists the
claims that :func:`paired_bootstrap` / :func:`paired_bootstrap_fd` and :func:`verdict` test.

Conventions (docs/CONVENTIONS.md): images are ``N x 3 x H x W`` float tensors in [-1, 1], masks
``N x 1 x H x W`` with hole = 1. PSNR and SSIM work on float RGB in [0, 1] (``(x + 1) / 2``,
clipped), never on uint8-quantised copies.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pytorch_fid.fid_score import calculate_frechet_distance
from skimage.metrics import peak_signal_noise_ratio, structural_similarity
from torch import nn

# Exactly the keyword arguments passed to scikit-image; the report prints them.
PSNR_SETTINGS: dict = {"data_range": 1.0}
# Wang et al. 2004: 11-tap Gaussian window with sigma 1.5, population (not sample) covariances.
# RGB images: SSIM per channel, averaged over the three channels.
SSIM_SETTINGS: dict = {
    "data_range": 1.0,
    "channel_axis": -1,
    "gaussian_weights": True,
    "sigma": 1.5,
    "use_sample_covariance": False,
    "win_size": 11,
}

# Hole-area bins of the irregular-mask evaluation (NVIDIA irregular mask set: 0-10% ... 50-60%).
AREA_BIN_EDGES: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6)
AREA_BIN_LABELS: tuple[str, ...] = tuple(
    f"{round(lo * 100)}-{round(hi * 100)}%" for lo, hi in zip(AREA_BIN_EDGES[:-1], AREA_BIN_EDGES[1:])
)
AREA_BIN_OVERFLOW = ">60%"

MASK_SETS = ("square", "irregular")
ROW_COLUMNS = ("image_id", "mask_set", "mask_id", "area_bin", "hole_fraction", "psnr", "ssim", "lpips", "id_sim", "hole_l1",
               "psnr_hole", "l1")
# Added after the first evaluations: an evaluation folder written before them reads without them.
LATER_ROW_COLUMNS = ("psnr_hole", "l1")
# Frechet distance on the face-recognition network's 128-d unit embeddings (face crop of the ID
# metric): a face-specific FD next to the ImageNet-backbone one. Ours and Variant 2 train with an
# ID loss on this network, so for them it is not an independent judge.
FACE_FD_BACKBONE = "faceapi-resnet29"

# Direction of every reported metric; bootstrap differences are read through it.
HIGHER_IS_BETTER: dict[str, bool] = {"psnr": True, "ssim": True, "lpips": False, "id_sim": True, "fd": False,
                                     "hole_l1": False, "psnr_hole": True, "l1": False}

HOLDS, DOES_NOT_HOLD, INCONCLUSIVE = "holds", "does not hold", "inconclusive"

# The identity network of the ID loss and of the id_sim metric (PAPER.md sec. 2 and 8).
IDENTITY_NETWORK = "faceapi-recognition (dlib ResNet-29 metric net)"


# ------------------------------------------------------------------------------ per image


def to_unit_rgb(images: torch.Tensor) -> np.ndarray:
    """``N x 3 x H x W`` tensor in [-1, 1] -> ``N x H x W x 3`` float64 array in [0, 1].

    Values are clipped: a network may overshoot [-1, 1] slightly, and any saved or displayed
    image is clipped too, so the metric scores what a user would see.
    """
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"expected N x 3 x H x W images, got shape {tuple(images.shape)}")
    unit = (images.detach().to("cpu", torch.float64).clamp(-1.0, 1.0) + 1.0) / 2.0
    return unit.permute(0, 2, 3, 1).numpy()


def psnr(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Per-image PSNR in dB (PAPER.md sec. 6) with :data:`PSNR_SETTINGS`; shape ``(N,)``.

    ``10 log10(1 / MSE)`` over all pixels and channels of the [0, 1] RGB image; identical images
    give ``inf``.
    """
    p, t = to_unit_rgb(pred), to_unit_rgb(target)
    with np.errstate(divide="ignore"):
        return np.array([peak_signal_noise_ratio(ti, pi, **PSNR_SETTINGS) for pi, ti in zip(p, t)])


def psnr_hole(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> np.ndarray:
    """Per-image PSNR in dB inside the hole only; shape ``(N,)``.

    ``10 log10(1 / MSE_hole)``, ``MSE_hole = sum_{p in hole, c} (x_pc - y_pc)^2 / (3 |hole|)`` on the
    same clipped [0, 1] RGB as :func:`psnr` (peak 1): the hole's pixels are the only ones a
    composite can get wrong, so unlike the whole-image PSNR it does not rise with the known area.
    ``mask``: ``N x 1 x H x W``, hole = 1 (> 0.5). Identical holes give ``inf``, an empty hole ``nan``.
    """
    p, t = to_unit_rgb(pred), to_unit_rgb(target)
    hole = (mask.detach().to("cpu") > 0.5)[:, 0].numpy()
    if hole.shape != p.shape[:3]:
        raise ValueError(f"mask of shape {tuple(mask.shape)} does not fit images of shape {tuple(pred.shape)}")
    out = np.full(len(p), np.nan)
    for i, (pi, ti, hi) in enumerate(zip(p, t, hole)):
        if hi.any():
            mse = float(np.mean((pi[hi] - ti[hi]) ** 2))
            with np.errstate(divide="ignore"):
                out[i] = 10.0 * np.log10(1.0 / mse) if mse > 0 else np.inf
    return out


def mean_abs_error(pred: torch.Tensor, target: torch.Tensor, region: torch.Tensor) -> np.ndarray:
    """Per-image L1 on the [0, 1] scale over ``region`` (``N x 1 x H x W``, 1 = counted):
    ``sum_{p in region, c} |x_pc - y_pc| / 2 / (C |region|)`` on the images in [-1, 1] as given
    (not clipped). ``hole_l1`` is it over the hole, ``l1`` over the whole image; shape ``(N,)``."""
    err = ((pred.double() - target.double()).abs() / 2 * region).flatten(1).sum(1)
    return (err / (region.double().flatten(1).sum(1) * pred.shape[1]).clamp_min(1)).cpu().numpy()


def ssim(pred: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Per-image SSIM (PAPER.md sec. 6, Wang et al. 2004) with :data:`SSIM_SETTINGS`; shape ``(N,)``."""
    p, t = to_unit_rgb(pred), to_unit_rgb(target)
    return np.array([structural_similarity(pi, ti, **SSIM_SETTINGS) for pi, ti in zip(p, t)])


def area_bin(hole_fraction: float) -> str:
    """Label of the hole-area bin (``"0-10%"`` ... ``"50-60%"``, or ``">60%"``) of a hole fraction."""
    if not 0.0 <= hole_fraction <= 1.0:
        raise ValueError(f"hole fraction must lie in [0, 1], got {hole_fraction}")
    for label, hi in zip(AREA_BIN_LABELS, AREA_BIN_EDGES[1:]):
        if hole_fraction <= hi:
            return label
    return AREA_BIN_OVERFLOW


# -------------------------------------------------------------------------- Frechet distance


def _mean_cov(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    features = np.asarray(features, np.float64)
    if features.ndim != 2 or features.shape[0] < 2:
        raise ValueError(f"expected an N x D feature array with N >= 2, got shape {features.shape}")
    return features.mean(axis=0), np.cov(features, rowvar=False)


def frechet_distance(feats_a: np.ndarray, feats_b: np.ndarray) -> float:
    """Frechet distance between Gaussians fitted to two ``N x D`` feature sets (PAPER.md sec. 6,
    FID of Heusel et al. 2017): ``||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2))``.

    Means and covariances in float64; the distance itself is pytorch-fid's
    ``calculate_frechet_distance``, so with Inception pool3 features this is the standard FID.
    """
    mu_a, cov_a = _mean_cov(feats_a)
    mu_b, cov_b = _mean_cov(feats_b)
    with warnings.catch_warnings():
        # pytorch-fid 0.3.0 passes scipy.linalg.sqrtm's `disp`, deprecated since SciPy 1.16.
        warnings.simplefilter("ignore", DeprecationWarning)
        return float(calculate_frechet_distance(mu_a, cov_a, mu_b, cov_b))


class _ResampledFrechet:
    """Frechet distance of weighted resamples of one paired feature set, fast enough to bootstrap.

    A bootstrap resample with multiplicities ``c_i`` has covariances ``A^T A / (n - 1)`` and
    ``B^T B / (n - 1)`` where ``A = diag(sqrt c)(X_u - mu_X)`` over the distinct drawn rows ``u``.
    The nonzero eigenvalues of ``C_a C_b`` are the squared singular values of ``A B^T``, so
    ``Tr (C_a C_b)^(1/2) = ||A B^T||_* / (n - 1)``. Every inner product it needs comes from the
    full-sample Gram matrices, computed once; a resample then costs one eigendecomposition of a
    matrix of the number of distinct rows (about 0.63 n), not a D x D matrix square root.
    """

    def __init__(self, feats_a: np.ndarray, feats_b: np.ndarray):
        a = np.asarray(feats_a, np.float64)
        b = np.asarray(feats_b, np.float64)
        if a.shape != b.shape or a.ndim != 2:
            raise ValueError(f"paired feature sets must have the same N x D shape, got {a.shape} and {b.shape}")
        # Centring on the full-sample mean first keeps the Gram entries small (better conditioned);
        # the Frechet distance does not change when both sets are shifted by the same vector.
        shift = a.mean(axis=0)
        a, b = a - shift, b - shift
        self.n = a.shape[0]
        self.gram_aa, self.gram_ab, self.gram_bb = a @ a.T, a @ b.T, b @ b.T

    def __call__(self, counts: np.ndarray) -> float:
        """Frechet distance of the resample drawing row ``i`` ``counts[i]`` times."""
        u = np.flatnonzero(counts)
        c = counts[u].astype(np.float64)
        n = c.sum()
        w = c / n
        gaa, gab, gbb = (g[np.ix_(u, u)] for g in (self.gram_aa, self.gram_ab, self.gram_bb))
        # Inner products of the resample means with the rows and with each other.
        a_mb, ma_b = gab @ w, w @ gab  # <x_i, mu_b>, <mu_a, y_j>
        ma_mb = w @ gab @ w
        # Cross Gram of the centred rows, (x_i - mu_a) . (y_j - mu_b), weighted by sqrt(c).
        cross = gab - a_mb[:, None] - ma_b[None, :] + ma_mb
        root_c = np.sqrt(c)
        cross = root_c[:, None] * cross * root_c[None, :]
        eig = np.linalg.eigvalsh(cross @ cross.T)
        # The product has rank <= min(D, n - 1); its zero eigenvalues come out as rounding noise
        # of size eps * max, whose square roots would add up to a bias. Zero them.
        eig[eig < eig[-1] * eig.size * np.finfo(np.float64).eps] = 0.0
        tr_sqrt = np.sqrt(eig).sum() / (n - 1)
        ma_ma, mb_mb = w @ gaa @ w, w @ gbb @ w
        tr_a = (c @ np.diag(gaa) - n * ma_ma) / (n - 1)
        tr_b = (c @ np.diag(gbb) - n * mb_mb) / (n - 1)
        mean_term = ma_ma - 2.0 * ma_mb + mb_mb
        return float(mean_term + tr_a + tr_b - 2.0 * tr_sqrt)


def bootstrap_counts(n_items: int, n_resamples: int, seed: int) -> np.ndarray:
    """``n_resamples x n_items`` multiplicities of resampling ``n_items`` with replacement.

    The same ``(n_items, n_resamples, seed)`` always gives the same resamples, which is what
    pairs the bootstrap distributions of two models evaluated on the same images.
    """
    rng = np.random.default_rng(seed)
    counts = np.empty((n_resamples, n_items), np.int64)
    for r in range(n_resamples):
        counts[r] = np.bincount(rng.integers(0, n_items, n_items), minlength=n_items)
    return counts


def fd_bootstrap_distribution(feats_real: np.ndarray, feats_fake: np.ndarray, n: int = 1000, seed: int = 0) -> np.ndarray:
    """Frechet distances of ``n`` joint resamples with replacement of (real, fake) rows: row
    ``i`` of both sets is the same test image, and both are drawn together. Shape ``(n,)``."""
    resampled = _ResampledFrechet(feats_real, feats_fake)
    return np.array([resampled(c) for c in bootstrap_counts(resampled.n, n, seed)])


# ------------------------------------------------------------ FD intervals by half-sampling

FD_INTERVAL = ("half-sampling: FD recomputed on random halves of the test images (drawn without "
               "replacement), deviations from their mean, centred on the full-set FD")


def half_sample_counts(n_items: int, n_subsets: int, seed: int) -> np.ndarray:
    """``n_subsets x n_items`` 0/1 rows, each choosing ``n_items // 2`` items without replacement;
    the same arguments give the same subsets, which pairs the models evaluated on the same images."""
    rng = np.random.default_rng(seed)
    counts = np.zeros((n_subsets, n_items), np.int64)
    for r in range(n_subsets):
        counts[r, rng.choice(n_items, n_items // 2, replace=False)] = 1
    return counts


def exact_fd(feats_real: np.ndarray, feats_fake: np.ndarray) -> float:
    """The Frechet distance of the full paired sets by the Gram-matrix route of
    :class:`_ResampledFrechet` (exact also where N < D, where pytorch-fid's matrix square root
    needs its regulariser): the estimate that the half-sample intervals are centred on."""
    resampled = _ResampledFrechet(feats_real, feats_fake)
    return resampled(np.ones(resampled.n, np.int64))


def fd_half_samples(feats_real: np.ndarray, feats_fake: np.ndarray, n: int = 1000, seed: int = 0,
                    progress: str | None = None) -> np.ndarray:
    """FD of ``n`` random halves of the paired (real, fake) rows (:func:`half_sample_counts`).
    ``progress``: a label for a progress bar with rate and ETA (on a terminal only)."""
    from .data import progress as progress_bar

    resampled = _ResampledFrechet(feats_real, feats_fake)
    counts = half_sample_counts(resampled.n, n, seed)
    return np.array([resampled(c) for c in (counts if progress is None else progress_bar(counts, progress, "half"))])


def half_sample_interval(estimate: float, half_values: np.ndarray, n_items: int,
                         confidence: float = 0.95) -> tuple[float, float]:
    """Interval of a full-set statistic from its values on halves drawn without replacement.

    The Frechet distance is biased by the sample size (strongly where N < D), so resamples with
    replacement (about 63% distinct images) or halves sit at another level than the full-set
    value, and a percentile interval of them can miss the estimate altogether. Deviations of the
    halves from *their own* mean carry the spread without that shift; with the finite-population
    factor ``sqrt(m / (N - m))`` (1 for halves) they stand for the full set's sampling error
    (subsampling, Politis & Romano 1994), and the interval is ``estimate - quantiles(deviation)``.
    It covers the expected FD *at N images*, the quantity a comparison of two models evaluated
    on the same N images is about.
    """
    m = n_items // 2
    deviation = np.sqrt(m / (n_items - m)) * (np.asarray(half_values, np.float64) - np.mean(half_values))
    tail = 100.0 * (1.0 - confidence) / 2.0
    q_lo, q_hi = np.percentile(deviation, [tail, 100.0 - tail])
    return float(estimate - q_hi), float(estimate - q_lo)


# -------------------------------------------------------------------------- paired bootstrap


def percentile_interval(samples: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """Equal-tailed percentile interval of a bootstrap distribution."""
    tail = 100.0 * (1.0 - confidence) / 2.0
    lo, hi = np.percentile(samples, [tail, 100.0 - tail])
    return float(lo), float(hi)


def paired_bootstrap(
    a: np.ndarray,
    b: np.ndarray | None = None,
    *,
    n: int = 10000,
    seed: int = 0,
    statistic: Callable[..., np.ndarray] = np.mean,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Percentile-bootstrap interval of a statistic of paired per-image differences (PAPER.md sec. 7).

    ``a`` holds the per-image differences, or with ``b`` given the differences are ``a - b``
    (row ``i`` of both is the same test image and mask). ``statistic`` must reduce along an
    ``axis`` keyword, like ``np.mean``. Returns ``(estimate, lo, hi)``: the statistic of the
    observed differences and the ``confidence`` interval over ``n`` resamples of the images.
    """
    diff = np.asarray(a, np.float64) if b is None else np.asarray(a, np.float64) - np.asarray(b, np.float64)
    if diff.ndim != 1 or diff.size < 2:
        raise ValueError(f"need a 1-D array of at least two paired differences, got shape {diff.shape}")
    if not np.isfinite(diff).all():
        raise ValueError("paired differences contain inf or nan (e.g. PSNR of an exact reconstruction)")
    rng = np.random.default_rng(seed)
    resampled = np.empty(n)
    chunk = max(1, 2_000_000 // diff.size)  # bound the index matrix to a few tens of MB
    for start in range(0, n, chunk):
        stop = min(n, start + chunk)
        resampled[start:stop] = statistic(diff[rng.integers(0, diff.size, (stop - start, diff.size))], axis=1)
    lo, hi = percentile_interval(resampled, confidence)
    return float(statistic(diff)), lo, hi


def paired_interval_fd(
    feats_real: np.ndarray,
    feats_a: np.ndarray,
    feats_b: np.ndarray,
    *,
    n: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> tuple[float, float, float]:
    """Interval of ``FD(real, a) - FD(real, b)`` (PAPER.md sec. 7 for FID claims).

    FD is a statistic of the whole set, not of single images, so each half-sample recomputes
    both models' distances on the same half of the test images (:func:`half_sample_interval`).
    Row ``i`` of the three arrays must be the same test image. Returns ``(estimate, lo, hi)``,
    estimate and interval by the one Gram-matrix route (:func:`exact_fd`).
    """
    estimate = exact_fd(feats_real, feats_a) - exact_fd(feats_real, feats_b)
    diffs = fd_half_samples(feats_real, feats_a, n, seed) - fd_half_samples(feats_real, feats_b, n, seed)
    lo, hi = half_sample_interval(estimate, diffs, len(feats_real), confidence)
    return float(estimate), lo, hi


def verdict(lo: float, hi: float, higher_is_better: bool) -> str:
    """Verdict on "the first model beats the second" from the interval of (first - second).

    ``"holds"`` when the interval excludes 0 in the claimed direction, ``"does not hold"`` when
    it excludes 0 in the other direction, ``"inconclusive"`` when it contains 0.
    """
    if lo > hi:
        raise ValueError(f"interval bounds out of order: ({lo}, {hi})")
    better, worse = (lo > 0, hi < 0) if higher_is_better else (hi < 0, lo > 0)
    if better:
        return HOLDS
    if worse:
        return DOES_NOT_HOLD
    return INCONCLUSIVE


# ------------------------------------------------------------------------------ metric suite


def metric_key(metric: str, backbone: str) -> str:
    """Summary key of a backbone-dependent metric: ``fd_<extractor name>`` or
    ``lpips_<backbone>`` (the ``lpips-`` prefix of the LPIPS module's name dropped)."""
    if metric == "fd":
        return f"fd_{backbone}"
    if metric == "lpips":
        return f"lpips_{backbone.removeprefix('lpips-')}"
    raise ValueError(f"metric {metric!r} does not depend on a backbone")


class MetricSuite:
    """Accumulates every per-image metric and the FD features over an evaluation (PAPER.md sec. 6).

    ``lpips_net(x, y)`` returns per-image LPIPS distances, ``id_embedder(images)`` L2-normalised
    identity embeddings (the face-recognition network of the structure reconstructor's ID loss,
    PAPER.md sec. 2), ``fid_extractor(images)`` ``N x D`` pooled features; all receive images in
    [-1, 1]. ``lpips_net`` and ``fid_extractor`` carry ``.name``, their backbone.
    """

    def __init__(self, lpips_net: nn.Module, id_embedder: nn.Module, fid_extractor: nn.Module):
        self.lpips_net, self.id_embedder, self.fid_extractor = lpips_net, id_embedder, fid_extractor
        # faceinpaint.pretrained.IdentityEmbedder carries no name: it always wraps face-api's net.
        self.backbones = {"fd": fid_extractor.name, "lpips": lpips_net.name, "id": getattr(id_embedder, "name", IDENTITY_NETWORK)}
        self._rows: list[dict] = []
        self._features: dict[str, dict[str, list]] = defaultdict(
            lambda: {"image_id": [], "composite": [], "real": [], "id_composite": [], "id_real": []})

    @torch.no_grad()
    def update(
        self,
        original: torch.Tensor,
        composite: torch.Tensor,
        mask: torch.Tensor,
        image_ids: Sequence[str],
        mask_ids: Sequence[int],
        mask_set: str,
        real: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> None:
        """Score a batch of composites against their originals; ``mask`` is the hole (= 1).

        ``real``: the originals' FD features and identity embeddings, precomputed (the
        ``test_features`` stage); ``None`` computes them here."""
        if mask_set not in MASK_SETS:
            raise ValueError(f"mask_set must be one of {MASK_SETS}, got {mask_set!r}")
        if not (len(image_ids) == len(mask_ids) == original.shape[0] == composite.shape[0] == mask.shape[0]):
            raise ValueError("original, composite, mask, image_ids and mask_ids must have the same length")
        if real is None:
            real = (self.fid_extractor(original), self.id_embedder(original))
        elif not (real[0].shape[0] == real[1].shape[0] == original.shape[0]):
            raise ValueError(f"real features for {real[0].shape[0]} / {real[1].shape[0]} images, batch has {original.shape[0]}")
        fd_original, id_original = real
        psnr_values, ssim_values = psnr(composite, original), ssim(composite, original)
        lpips_values = self.lpips_net(composite, original).reshape(-1).double().cpu().numpy()
        id_composite = self.id_embedder(composite)
        id_values = F.cosine_similarity(id_composite, id_original, dim=1).double().cpu().numpy()
        hole_fractions = mask.reshape(mask.shape[0], -1).double().mean(dim=1).cpu().numpy()
        hole_l1 = mean_abs_error(composite, original, mask)
        l1_values = mean_abs_error(composite, original, torch.ones_like(mask))
        psnr_hole_values = psnr_hole(composite, original, mask)
        for i, (image_id, mask_id) in enumerate(zip(image_ids, mask_ids)):
            self._rows.append(
                {
                    "image_id": str(image_id),
                    "mask_set": mask_set,
                    "mask_id": int(mask_id),
                    "area_bin": area_bin(float(hole_fractions[i])),
                    "hole_fraction": float(hole_fractions[i]),
                    "psnr": float(psnr_values[i]),
                    "ssim": float(ssim_values[i]),
                    "lpips": float(lpips_values[i]),
                    "id_sim": float(id_values[i]),
                    "hole_l1": float(hole_l1[i]),
                    "psnr_hole": float(psnr_hole_values[i]),
                    "l1": float(l1_values[i]),
                }
            )
        store = self._features[mask_set]
        store["image_id"].extend(str(i) for i in image_ids)
        store["composite"].append(self.fid_extractor(composite).double().cpu().numpy())
        store["real"].append(fd_original.double().cpu().numpy())
        store["id_composite"].append(id_composite.double().cpu().numpy())
        store["id_real"].append(id_original.double().cpu().numpy())

    def rows(self) -> pd.DataFrame:
        """Per-image rows, columns :data:`ROW_COLUMNS`, in evaluation order."""
        return pd.DataFrame(self._rows, columns=list(ROW_COLUMNS))

    def features(self, mask_set: str = "square") -> dict[str, np.ndarray]:
        """FD features of one mask set: ``image_id`` (N,), ``composite`` and ``real`` (N x D float32)."""
        store = self._features.get(mask_set)
        if store is None or not store["image_id"]:
            raise ValueError(f"no images of mask set {mask_set!r} were evaluated")
        return {
            "image_id": np.array(store["image_id"], dtype=str),
            "composite": np.concatenate(store["composite"]).astype(np.float32),
            "real": np.concatenate(store["real"]).astype(np.float32),
        }

    def face_features(self, mask_set: str = "square") -> dict[str, np.ndarray]:
        """Identity embeddings (N x 128, float64) of the composites and originals of one mask set."""
        self.features(mask_set)  # the same check
        store = self._features[mask_set]
        return {"composite": np.concatenate(store["id_composite"]), "real": np.concatenate(store["id_real"])}

    def summary(self, mask_set: str = "square") -> dict:
        """Means of the per-image metrics and the Frechet distance of one mask set.

        Backbone-dependent keys name their backbone (:func:`metric_key`); ``backbones`` maps
        ``fd`` / ``lpips`` / ``id`` to the network names, and the PSNR / SSIM settings are included.
        """
        rows = self.rows()
        rows = rows[rows["mask_set"] == mask_set]
        feats, face = self.features(mask_set), self.face_features(mask_set)
        return {
            "mask_set": mask_set,
            "n_images": int(len(rows)),
            "psnr": float(rows["psnr"].mean()),
            "ssim": float(rows["ssim"].mean()),
            metric_key("lpips", self.backbones["lpips"]): float(rows["lpips"].mean()),
            "id_sim": float(rows["id_sim"].mean()),
            metric_key("fd", self.backbones["fd"]): frechet_distance(feats["real"], feats["composite"]),
            metric_key("fd", FACE_FD_BACKBONE): frechet_distance(face["real"], face["composite"]),
            "hole_l1": float(rows["hole_l1"].mean()),
            "psnr_hole": float(rows["psnr_hole"].mean()),
            "l1": float(rows["l1"].mean()),
            "backbones": dict(self.backbones),
            "psnr_settings": dict(PSNR_SETTINGS),
            "ssim_settings": dict(SSIM_SETTINGS),
        }
