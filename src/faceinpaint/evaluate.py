"""The ``evaluate`` stage: one evaluation path for every model (PAPER.md sec. 6).

Runs a trained model (or the classical biharmonic fill) on the prepared test split with the ten
fixed squares (test image ``i`` with square ``i % 10``) and on the irregular evaluation masks
(every area bin), scores each composite with :class:`faceinpaint.metrics.MetricSuite`, and writes
``artifacts/eval/<model>/`` in the format of :mod:`faceinpaint.evalformat` plus
``reports/metrics/eval_<model>.json`` for ``dvc metrics diff``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from .config import Config
from .data import PREPARED_DIR, EvaluationDataset, PreparedData, identity_box_fraction, progress
from .models import INPAINTERS, training_stages
from .pretrained.weights import sha256_of
from .recipes import MODELS_DIR, load_inpainter

log = logging.getLogger(__name__)
EVAL_DIR = Path("artifacts/eval")
TEST_FEATURES_DIR = Path("artifacts/test_features")

# the training stages each evaluated model depends on (reported beside its numbers)
UPSTREAM = {m: training_stages(m) for m in INPAINTERS}


def training_facts(models: tuple[str, ...]) -> dict:
    """Images seen and training time of each training stage (from its ``progress.json``)."""
    facts = {}
    for name in models:
        path = MODELS_DIR / name / "progress.json"
        if path.is_file():
            p = json.loads(path.read_text())
            facts[name] = {"images_seen": int(p["images_seen"]), "train_time_s": float(p["elapsed_s"])}
        elif name == "stylegan":  # an external prior (stylegan.checkpoint): not trained here
            facts[name] = {"images_seen": 0, "train_time_s": 0.0}
    return facts


def metric_networks(cfg: Config, device="cpu"):
    """LPIPS, identity embedder and FD feature extractor named by ``params.backbones``."""
    from .pretrained import IdentityEmbedder, fid_feature_extractor, load_face_recognition, lpips_metric

    lpips = lpips_metric(cfg.backbones.lpips).to(device)
    identity = IdentityEmbedder(load_face_recognition(cfg.backbones.face_recognition), identity_box_fraction(cfg)).to(device)
    fid = fid_feature_extractor(cfg.backbones.fid).to(device)
    return lpips, identity, fid


class CurveEvaluator:
    """Learning-curve points of an inpainter during training: the evaluation's own metric code
    (:class:`~faceinpaint.metrics.MetricSuite`) on the first ``n`` test images with their square
    masks (image ``i``: square ``i % 10``). ``__call__(inpaint) -> {metric: value}``."""

    def __init__(self, cfg: Config, n: int, device="cpu"):
        self.cfg, self.device = cfg, torch.device(device)
        self.networks = metric_networks(cfg, self.device)
        prepared = PreparedData(PREPARED_DIR)
        self.squares = EvaluationDataset.squares(prepared.images("test"), prepared.square_masks(), n)

    @torch.no_grad()
    def __call__(self, inpaint) -> dict:
        from .metrics import MetricSuite

        suite = MetricSuite(*self.networks)
        for batch in DataLoader(self.squares, batch_size=self.cfg.evaluate.batch_size, shuffle=False):
            image, mask = batch["image"].to(self.device), batch["mask"].to(self.device)
            out = inpaint(image * (1 - mask), mask)
            suite.update(image, out["composite"], mask, [str(int(i)) for i in batch["index"]],
                         [int(m) for m in batch["mask_id"]], "square")
        summary = suite.summary("square")
        return {k: v for k, v in summary.items() if isinstance(v, float)}


def evaluation_sets(cfg: Config, prepared: PreparedData) -> tuple[dict[str, EvaluationDataset], list[int]]:
    """The two test sets of every evaluation, in evaluation order: ``square`` (test image ``i``
    with square ``i % 10``, the first ``evaluate.max_test_images`` images) and ``irregular``
    (every irregular evaluation mask with its test image); plus the file number of each
    irregular mask (its ``mask_id`` in the per-image rows)."""
    test = prepared.images("test")
    squares = EvaluationDataset.squares(test, prepared.square_masks(), cfg.evaluate.max_test_images)
    irregular_masks, irregular_rows = prepared.irregular_eval()
    mask_files = irregular_rows["file"].str.slice(0, 5).astype(int).tolist()
    return {"square": squares, "irregular": EvaluationDataset.irregular(test, irregular_masks)}, mask_files


class RealFeaturesError(RuntimeError):
    """The stored real-image features do not belong to this evaluation (file, what differs)."""


class RealFeatures:
    """FD features and identity embeddings of the *original* test images of both evaluation
    sets, the half of the metric suite's network work that is the same for every model.

    The ``test_features`` stage computes them once (:meth:`compute`), batch by batch in the
    evaluation's own batches (same sets, order and ``evaluate.batch_size``), so each batch's
    values are bit for bit those the evaluation would compute inline; every evaluation then
    reads them (:meth:`load`, :meth:`batch`) and runs the networks on its composites only.
    """

    FILE = "features.npz"
    META = "meta.json"

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict):
        self.arrays, self.meta = arrays, meta

    @staticmethod
    def expected_meta(cfg: Config, prepared: PreparedData, networks) -> dict:
        from .metrics import MetricSuite

        backbones = MetricSuite(*networks).backbones  # the names the evaluation records
        sets, _ = evaluation_sets(cfg, prepared)
        return json.loads(json.dumps({  # as stored: JSON types
            "backbones": {"fd": backbones["fd"], "id": backbones["id"]},
            "batch_size": cfg.evaluate.batch_size,
            "test_images_sha256": sha256_of(prepared.root / "test_images.npy"),
            "identity_box": identity_box_fraction(cfg),
            "sets": {k: len(v) for k, v in sets.items()},
        }))

    @classmethod
    @torch.no_grad()
    def compute(cls, cfg: Config, prepared: PreparedData, networks, device="cpu") -> "RealFeatures":
        _, identity, fid = networks
        sets, _ = evaluation_sets(cfg, prepared)
        arrays: dict[str, np.ndarray] = {}
        for mask_set, dataset in sets.items():
            ids, fds, embs = [], [], []
            for batch in progress(DataLoader(dataset, batch_size=cfg.evaluate.batch_size, shuffle=False), f"test features ({mask_set})", "batch"):
                image = batch["image"].to(device)
                ids.append(batch["index"].numpy())
                fds.append(fid(image).cpu().numpy())
                embs.append(identity(image).cpu().numpy())
            arrays[f"{mask_set}_image"] = np.concatenate(ids).astype(np.int64)
            arrays[f"{mask_set}_fd"] = np.concatenate(fds)
            arrays[f"{mask_set}_id"] = np.concatenate(embs)
        return cls(arrays, cls.expected_meta(cfg, prepared, networks))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        np.savez(folder / self.FILE, **self.arrays)
        (folder / self.META).write_text(json.dumps(self.meta, indent=2, sort_keys=True) + "\n")

    @classmethod
    def load(cls, folder: Path, expected: dict) -> "RealFeatures":
        """Read ``folder`` and check it was computed for ``expected`` (:meth:`expected_meta`)."""
        path = folder / cls.FILE
        if not path.is_file() or not (folder / cls.META).is_file():
            raise RealFeaturesError(f"{path}: missing (run `dvc repro test_features`)")
        meta = json.loads((folder / cls.META).read_text())
        for key, value in expected.items():
            if meta.get(key) != value:
                raise RealFeaturesError(f"{folder / cls.META}: {key} is {meta.get(key)!r}, this evaluation needs "
                                        f"{value!r} (run `dvc repro test_features`)")
        with np.load(path) as data:
            arrays = {k: data[k] for k in data.files}
        return cls(arrays, meta)

    def batch(self, mask_set: str, start: int, image_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(FD features, identity embeddings) of the originals of the batch at ``start``."""
        stop = start + len(image_ids)
        stored = self.arrays[f"{mask_set}_image"][start:stop]
        if not np.array_equal(stored, image_ids.numpy()):
            raise RealFeaturesError(f"{self.FILE}: {mask_set} images {start}..{stop - 1} are not this batch's "
                                    "(evaluation order changed; run `dvc repro test_features`)")
        return (torch.from_numpy(self.arrays[f"{mask_set}_fd"][start:stop]),
                torch.from_numpy(self.arrays[f"{mask_set}_id"][start:stop]))


def write_test_features(cfg: Config, out_dir: Path = TEST_FEATURES_DIR, device="cpu") -> RealFeatures:
    """The ``test_features`` stage."""
    started = time.monotonic()
    prepared = PreparedData(PREPARED_DIR)
    feats = RealFeatures.compute(cfg, prepared, metric_networks(cfg, device), device)
    feats.save(out_dir)
    log.info("test features: %s in %.0f s", ", ".join(f"{k} {v}" for k, v in feats.meta["sets"].items()),
             time.monotonic() - started)
    return feats


@torch.no_grad()
def evaluate_model(cfg: Config, name: str, out_dir: Path | None = None, prepared: PreparedData | None = None,
                   device="cpu", features_dir: Path | None = TEST_FEATURES_DIR) -> dict:
    """Evaluate ``name`` and write its evaluation folder; returns the summary. The originals'
    network features come from ``features_dir`` (the ``test_features`` stage); ``None`` computes
    them inline (the same values)."""
    from .metrics import MetricSuite
    from .evalformat import figure_sample_indices, samples_from_batch, write_eval_outputs

    started = time.monotonic()
    prepared = prepared or PreparedData(PREPARED_DIR)
    out_dir = out_dir or EVAL_DIR / name
    inpaint = load_inpainter(cfg, name, device)
    networks = metric_networks(cfg, device)
    real = None if features_dir is None else RealFeatures.load(features_dir, RealFeatures.expected_meta(cfg, prepared, networks))
    suite = MetricSuite(*networks)
    ev = cfg.evaluate
    sets, mask_files = evaluation_sets(cfg, prepared)
    squares = sets["square"]

    torch.manual_seed(cfg.seed)
    for mask_set, dataset in sets.items():
        start = 0
        for batch in progress(DataLoader(dataset, batch_size=ev.batch_size, shuffle=False), f"evaluate {name} ({mask_set})", "batch"):
            image, mask = batch["image"].to(device), batch["mask"].to(device)
            out = inpaint(image * (1 - mask), mask)
            ids = [str(int(i)) for i in batch["index"]]
            mask_ids = [int(m) for m in batch["mask_id"]] if mask_set == "square" else [mask_files[int(m)] for m in batch["mask_id"]]
            known = None if real is None else tuple(t.to(device) for t in real.batch(mask_set, start, batch["index"]))
            suite.update(image, out["composite"], mask, ids, mask_ids, mask_set, real=known)
            start += len(ids)

    picks = figure_sample_indices(len(squares), min(ev.figure_images, len(squares)))
    items = [squares[k] for k in picks]
    image = torch.stack([it["image"] for it in items]).to(device)
    mask = torch.stack([it["mask"] for it in items]).to(device)
    composite = inpaint(image * (1 - mask), mask)["composite"]
    samples = samples_from_batch([str(it["index"]) for it in items], [it["mask_id"] for it in items], image, mask, composite)

    summary = suite.summary("square")
    summary.update({
        "model": name,
        "resolution": cfg.resolution,
        "profile": cfg.profile_name,
        "square_boxes": [list(b) for b in prepared.info()["square_boxes"]],
        "training": training_facts(UPSTREAM[name]),
    })
    write_eval_outputs(out_dir, suite.rows(), summary, suite.features("square"), samples)
    log.info("%s: evaluated in %.0f s", name, time.monotonic() - started)
    return summary


def metrics_file(summary: dict, name: str) -> dict:
    """What ``dvc metrics show`` / ``dvc exp show`` compare across experiments, for
    ``reports/metrics/eval_<model>.json``: the square-set means and both FDs (keys naming their
    backbone), how many test images they cover, and the images the model itself was trained on.
    Everything else (backbones, settings, irregular bins, per-image rows) stays in the evaluation
    folder (``summary.json``, ``per_image.csv``) and the report."""
    out = {k: round(v, 5) for k, v in summary.items() if isinstance(v, float)}
    out["n_images"] = summary["n_images"]
    out["images_seen"] = summary["training"].get(name, {}).get("images_seen", 0)
    return out


def run(cfg: Config, name: str) -> dict:
    """The ``evaluate@<name>`` stage, logged as an MLflow run under the pipeline's parent."""
    from . import tracking

    stage = f"evaluate@{name}"
    params = {k: v for k, v in cfg.as_flat_dict().items() if k.split(".")[0] in ("profile", "resolution", "seed", "evaluate", "backbones")}
    with tracking.start_run(stage, name, params):
        summary = evaluate_model(cfg, name)
        out = metrics_file(summary, name)
        path = Path("reports/metrics") / f"eval_{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
        tracking.log_metrics({k: v for k, v in out.items() if isinstance(v, (int, float))}, step=0)
        tracking.log_artifact(EVAL_DIR / name / "summary.json")
        tracking.log_artifact(EVAL_DIR / name / "per_image.csv")
    return summary
