"""The evaluation protocol and the ``evaluate`` stage: one path for every method (PAPER.md sec. 6).

The protocol knows inpainters only as callables ``f(image_damaged, mask) -> {"composite": ...}``
(:func:`evaluate_inpainter`) or as a folder of predictions for the exported benchmark
(:func:`evaluate_predictions`, :mod:`faceinpaint.benchmark`); the model registry
(:mod:`faceinpaint.models`) hands it the registered models' callables (:func:`evaluate_model`).
Every method runs on the prepared test split with the ten fixed squares (test image ``i`` with
square ``i % 10``) and on the irregular evaluation masks (every area bin); each composite is
scored with :class:`faceinpaint.metrics.MetricSuite`, and ``artifacts/eval/<name>/`` is written
in the format of :mod:`faceinpaint.evalformat` plus ``reports/metrics/eval_<name>.json`` for
``dvc metrics diff``. Every Frechet distance records its provenance (:func:`fd_provenance`).
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from .benchmark import BenchmarkError, Predictions, evaluation_sets, expected_manifest, read_predictions  # noqa: F401
from .config import Config
from .data import PREPARED_DIR, EvaluationDataset, PreparedData, identity_box_fraction, progress
from .metrics import LATER_ROW_COLUMNS
from .models import INPAINTERS, resolve, spec, training_stages
from .pretrained.weights import sha256_of

log = logging.getLogger(__name__)
EVAL_DIR = Path("artifacts/eval")
TEST_FEATURES_DIR = Path("artifacts/test_features")
# where the training stages write their models and progress.json (recipes.MODELS_DIR; a test
# checks the two agree). The protocol reads only progress.json, the facts beside the numbers.
MODELS_DIR = Path("artifacts/models")

# the training stages each evaluated model depends on (reported beside its numbers)
UPSTREAM = {m: training_stages(m) for m in INPAINTERS}


def training_facts(models: tuple[str, ...], models_dir: Path = MODELS_DIR) -> dict:
    """Images seen and training time of each training stage (from its ``progress.json``)."""
    facts = {}
    for name in models:
        path = models_dir / name / "progress.json"
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
        # the curves keep the columns they were started with (the hole-only metrics came later)
        return {k: v for k, v in summary.items() if isinstance(v, float) and k not in LATER_ROW_COLUMNS}


def fd_provenance(cfg: Config, summary: dict) -> dict[str, dict]:
    """What every Frechet distance of ``summary`` (each ``fd_<backbone>`` key,
    :func:`~faceinpaint.metrics.metric_key`) is measured with: ``backbone``, ``weights_sha256`` of
    the file its weights were loaded from, ``n_images`` (FD is biased by the sample size: compare
    FDs only at equal counts), ``resize`` (``size`` and ``filter``) and ``input_range`` of the
    images fed in. A backbone without an entry in :data:`FD_EXTRACTORS` is recorded as unknown."""
    out = {}
    for key in summary:
        if not key.startswith("fd_") or key == "fd_provenance":
            continue
        backbone = key[len("fd_"):]
        record = {"backbone": backbone, "weights_sha256": None, "n_images": int(summary["n_images"]),
                  "resize": None, "input_range": [-1.0, 1.0]}
        if backbone in FD_EXTRACTORS:
            weights, resize = FD_EXTRACTORS[backbone]
            record.update(weights_sha256=sha256_of(weights(cfg)), resize=dict(resize))
        else:
            log.warning("FD backbone %r has no provenance entry in faceinpaint.evaluate.FD_EXTRACTORS", backbone)
        out[key] = record
    return out


def _inception_weights(cfg: Config) -> Path:
    from .pretrained.weights import hub_checkpoints_dir, verified_path

    return verified_path("fid_inception", hub_checkpoints_dir())


def _efficientnet_weights(cfg: Config) -> Path:
    from .pretrained.efficientnet_lite import efficientnet_lite0_weights_path

    return Path(efficientnet_lite0_weights_path())


def _face_weights(cfg: Config) -> Path:
    from .pretrained.weights import verified_path

    return verified_path("faceapi_recognition_weights", cfg.backbones.face_recognition)


def _mobilenet_weights(cfg: Config) -> Path:
    from .pretrained.mobilenet_v2 import mobilenet_v2_weights_path

    return Path(mobilenet_v2_weights_path())


def _fd_extractors() -> dict:
    from .metrics import FACE_FD_BACKBONE
    from .pretrained.efficientnet_lite import IMAGENET_SIZE
    from .pretrained.face_recognition import FACE_INPUT_SIZE

    return {
        "inception-v3-pool3": (_inception_weights, {"size": 299, "filter": "bilinear, no antialiasing (pytorch-fid resize_input)"}),
        "efficientnet_lite0-pool": (_efficientnet_weights, {"size": IMAGENET_SIZE, "filter": "bilinear, antialiased"}),
        "mobilenet_v2-pool": (_mobilenet_weights, {"size": IMAGENET_SIZE, "filter": "bilinear, antialiased"}),
        FACE_FD_BACKBONE: (_face_weights, {"size": FACE_INPUT_SIZE, "filter": "face crop (data.identity_box), then bilinear, antialiased"}),
    }


#: FD feature extractors by backbone name (``.name`` of the extractor): ``(weights file of cfg,
#: resize)``. A new FD backbone adds its entry here.
FD_EXTRACTORS: dict[str, tuple] = _fd_extractors()


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


def evaluate_model(cfg: Config, name: str, out_dir: Path | None = None, prepared: PreparedData | None = None,
                   device="cpu", features_dir: Path | None = TEST_FEATURES_DIR) -> dict:
    """Evaluate the registered model ``name``: the registry (:mod:`faceinpaint.models`) hands
    over its inpainter, :func:`evaluate_inpainter` scores it. Returns the summary."""
    if not spec(name).inpaints:
        raise ValueError(f"model {name!r} does not inpaint; expected one of {', '.join(INPAINTERS)}")
    inpaint = resolve(spec(name).loader)(cfg, name, device)
    return evaluate_inpainter(cfg, inpaint, name, out_dir, prepared, device, features_dir,
                              training=training_facts(UPSTREAM[name]))


def evaluate_inpainter(cfg: Config, inpaint, name: str, out_dir: Path | None = None, prepared: PreparedData | None = None,
                       device="cpu", features_dir: Path | None = TEST_FEATURES_DIR, training: dict | None = None) -> dict:
    """Evaluate the inpainter ``inpaint(image_damaged, mask) -> {"composite": ...}`` under the
    name ``name`` and write its evaluation folder; returns the summary. ``training``: the facts
    of the training runs behind it (``{}``: none)."""
    def composites(mask_set, positions, image, mask):
        return inpaint(image * (1 - mask), mask)["composite"]

    return _evaluate(cfg, composites, name, out_dir, prepared, device, features_dir, {"training": training or {}})


def evaluate_predictions(cfg: Config, folder: str | Path | Predictions, name: str, out_dir: Path | None = None,
                         prepared: PreparedData | None = None, device="cpu",
                         features_dir: Path | None = TEST_FEATURES_DIR) -> dict:
    """Score a folder of a method's predictions for the exported benchmark
    (:mod:`faceinpaint.benchmark`) under the name ``name``, through the path every registered
    model takes (the same sets, batches, stored real features, metric suite and samples): the
    known pixels are replaced by the originals' (the composite, as for every model) and how much
    the raw predictions changed them is recorded (``known_pixels`` in the summary) and logged.
    The folder is checked whole before anything runs (:func:`faceinpaint.benchmark.read_predictions`;
    ``folder`` may be its result); a bad folder raises :class:`~faceinpaint.benchmark.BenchmarkError`
    and nothing is written. ``name`` must not be a registered model's."""
    check_external_name(name)
    prepared = prepared or PreparedData(PREPARED_DIR)
    preds = folder if isinstance(folder, Predictions) else read_predictions(folder, expected_manifest(cfg, prepared))
    folder = preds.folder
    changed = {"changed": 0, "total": 0, "abs_sum": 0.0, "max_abs": 0.0}

    def composites(mask_set, positions, image, mask):
        if len(positions) and mask_set is not None:
            c, n, total, top = preds.known_change("test", mask_set, positions, image, mask)
            changed.update(changed=changed["changed"] + c, total=changed["total"] + n,
                           abs_sum=changed["abs_sum"] + total, max_abs=max(changed["max_abs"], top))
        return preds.composite("test", mask_set or "square", positions, image, mask)

    def known_pixels() -> dict:
        fraction = changed["changed"] / max(changed["total"], 1)
        return {"changed_fraction": fraction, "mean_abs": changed["abs_sum"] / max(changed["total"], 1),
                "max_abs": changed["max_abs"], "scale": "[0, 1]",
                "note": "changes of the raw predictions to the known pixels, over every scored image; the scored "
                        "composites keep the originals' known pixels"}

    facts = {"training": {}, "external": {"predictions": str(folder), "format": preds.kind,
                                          "manifest_sha256": preds.manifest_sha256}, "known_pixels": known_pixels}
    summary = _evaluate(cfg, composites, name, out_dir, prepared, device, features_dir, facts)
    kp = summary["known_pixels"]
    if kp["changed_fraction"] > 0:
        log.warning("%s: the predictions changed %.2f%% of the known pixel values (mean |change| %.4g, max %.4g on "
                    "[0, 1]); they were replaced by the originals' before scoring", name, 100 * kp["changed_fraction"],
                    kp["mean_abs"], kp["max_abs"])
    return summary


@torch.no_grad()
def _evaluate(cfg: Config, composites, name: str, out_dir: Path | None, prepared: PreparedData | None,
              device, features_dir: Path | None, facts: dict) -> dict:
    """The one evaluation loop. ``composites(mask_set, positions, image, mask)`` returns the
    composites of the images at ``positions`` of a mask set (``mask_set`` None: the figure
    samples, positions in the square set). The originals' network features come from
    ``features_dir`` (the ``test_features`` stage); ``None`` computes them inline (the same
    values). ``facts`` are added to the summary (a callable is called after the loop)."""
    from .metrics import MetricSuite
    from .evalformat import figure_sample_indices, samples_from_batch, write_eval_outputs

    started = time.monotonic()
    prepared = prepared or PreparedData(PREPARED_DIR)
    out_dir = out_dir or EVAL_DIR / name
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
            ids = [str(int(i)) for i in batch["index"]]
            composite = composites(mask_set, range(start, start + len(ids)), image, mask)
            mask_ids = [int(m) for m in batch["mask_id"]] if mask_set == "square" else [mask_files[int(m)] for m in batch["mask_id"]]
            known = None if real is None else tuple(t.to(device) for t in real.batch(mask_set, start, batch["index"]))
            suite.update(image, composite, mask, ids, mask_ids, mask_set, real=known)
            start += len(ids)

    picks = figure_sample_indices(len(squares), min(ev.figure_images, len(squares)))
    items = [squares[k] for k in picks]
    image = torch.stack([it["image"] for it in items]).to(device)
    mask = torch.stack([it["mask"] for it in items]).to(device)
    composite = composites(None, picks, image, mask)
    samples = samples_from_batch([str(it["index"]) for it in items], [it["mask_id"] for it in items], image, mask, composite)

    summary = suite.summary("square")
    summary.update({
        "model": name,
        "resolution": cfg.resolution,
        "profile": cfg.profile_name,
        "square_boxes": [list(b) for b in prepared.info()["square_boxes"]],
    })
    summary.update({k: v() if callable(v) else v for k, v in facts.items()})
    summary["fd_provenance"] = fd_provenance(cfg, summary)
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


def provenance_params(summary: dict) -> dict[str, str]:
    """The FD provenance as flat MLflow params: ``fd_provenance.<fd key>.<field>``."""
    from .config import flatten

    return {f"fd_provenance.{k}": str(v) for k, v in flatten(summary.get("fd_provenance", {})).items()}


def _log_params(params: dict) -> None:
    from . import tracking

    if tracking.enabled():
        import mlflow

        if mlflow.active_run() is not None:
            mlflow.log_params(params)


def check_external_name(name: str) -> str:
    """An external method's name: a folder name of letters, digits, ``_`` and ``-``, not a registered model's."""
    import re

    from .models import MODELS

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", name or ""):
        raise BenchmarkError(f"method name {name!r}: expected letters, digits, '_' or '-' (it names artifacts/eval/<name>/)")
    if name in MODELS:
        raise BenchmarkError(f"method name {name!r} is a registered model's; choose another name for an external method")
    return name


def run(cfg: Config, name: str, device="cpu", predictions: str | Path | None = None) -> dict:
    """The ``evaluate@<name>`` stage on ``device``, logged as an MLflow run under the pipeline's
    parent: the registered model ``name``, or with ``predictions`` the folder of an external
    method's predictions scored under the name ``name`` (:func:`evaluate_predictions`)."""
    from . import tracking

    stage = f"evaluate@{name}"
    params = {k: v for k, v in cfg.as_flat_dict().items() if k.split(".")[0] in ("profile", "resolution", "seed", "evaluate", "backbones")}
    if predictions is not None:  # checked whole before the run opens: a bad folder leaves nothing behind
        check_external_name(name)
        params["predictions"] = str(predictions)
        predictions = read_predictions(predictions, expected_manifest(cfg, PreparedData(PREPARED_DIR)))
    with tracking.start_run(stage, name, params):
        if predictions is None:
            summary = evaluate_model(cfg, name, device=device)
        else:
            summary = evaluate_predictions(cfg, predictions, name, device=device)
        _log_params(provenance_params(summary))
        out = metrics_file(summary, name)
        path = Path("reports/metrics") / f"eval_{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
        tracking.log_metrics({k: v for k, v in out.items() if isinstance(v, (int, float))}, step=0)
        tracking.log_artifact(EVAL_DIR / name / "summary.json")
        tracking.log_artifact(EVAL_DIR / name / "per_image.csv")
    return summary
