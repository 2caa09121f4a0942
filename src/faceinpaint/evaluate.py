"""The ``evaluate`` stage: one evaluation path for every model (PAPER.md sec. 6).

Runs a trained model (or the classical biharmonic fill) on the prepared test split with the ten
fixed squares (test image ``i`` with square ``i % 10``) and on the irregular evaluation masks
(every area bin), scores each composite with :class:`faceinpaint.metrics.MetricSuite`, and writes
``artifacts/eval/<model>/`` in the format of :mod:`faceinpaint.report` plus
``reports/metrics/eval_<model>.json`` for ``dvc metrics diff``.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .config import Config
from .data import PREPARED_DIR, EvaluationDataset, PreparedData, identity_box_fraction
from .models import INPAINTERS, training_stages
from .recipes import MODELS_DIR, load_inpainter

log = logging.getLogger(__name__)
EVAL_DIR = Path("artifacts/eval")

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


@torch.no_grad()
def evaluate_model(cfg: Config, name: str, out_dir: Path | None = None, prepared: PreparedData | None = None,
                   device="cpu") -> dict:
    """Evaluate ``name`` and write its evaluation folder; returns the summary."""
    from .metrics import MetricSuite
    from .report import figure_sample_indices, samples_from_batch, write_eval_outputs

    started = time.monotonic()
    prepared = prepared or PreparedData(PREPARED_DIR)
    out_dir = out_dir or EVAL_DIR / name
    inpaint = load_inpainter(cfg, name, device)
    suite = MetricSuite(*metric_networks(cfg, device))
    test = prepared.images("test")
    ev = cfg.evaluate
    squares = EvaluationDataset.squares(test, prepared.square_masks(), ev.max_test_images)
    irregular_masks, irregular_rows = prepared.irregular_eval()
    irregular = EvaluationDataset.irregular(test, irregular_masks)
    mask_files = irregular_rows["file"].str.slice(0, 5).astype(int).tolist()

    torch.manual_seed(cfg.seed)
    for mask_set, dataset in (("square", squares), ("irregular", irregular)):
        for batch in DataLoader(dataset, batch_size=ev.batch_size, shuffle=False):
            image, mask = batch["image"].to(device), batch["mask"].to(device)
            out = inpaint(image * (1 - mask), mask)
            ids = [str(int(i)) for i in batch["index"]]
            mask_ids = [int(m) for m in batch["mask_id"]] if mask_set == "square" else [mask_files[int(m)] for m in batch["mask_id"]]
            suite.update(image, out["composite"], mask, ids, mask_ids, mask_set)

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


def metrics_file(summary: dict, rows_path: Path) -> dict:
    """Flat numbers for ``reports/metrics/eval_<model>.json``: square-set means and FD, plus
    PSNR per irregular area bin."""
    import pandas as pd

    out = {k: round(v, 5) for k, v in summary.items() if isinstance(v, float)}
    out["n_images"] = summary["n_images"]
    out["resolution"] = summary["resolution"]
    out["backbones"] = summary["backbones"]
    rows = pd.read_csv(rows_path)
    irr = rows[rows["mask_set"] == "irregular"].groupby("area_bin")["psnr"].mean()
    out["irregular_psnr"] = {b: round(float(v), 4) for b, v in irr.items()}
    return out


def run(cfg: Config, name: str) -> dict:
    """The ``evaluate@<name>`` stage, logged as an MLflow run under the pipeline's parent."""
    from . import tracking

    stage = f"evaluate@{name}"
    params = {k: v for k, v in cfg.as_flat_dict().items() if k.split(".")[0] in ("profile", "resolution", "seed", "evaluate", "backbones")}
    with tracking.start_run(stage, name, params):
        summary = evaluate_model(cfg, name)
        out = metrics_file(summary, EVAL_DIR / name / "per_image.csv")
        path = Path("reports/metrics") / f"eval_{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(out, indent=2) + "\n")
        tracking.log_metrics({k: v for k, v in out.items() if isinstance(v, (int, float))}, step=0)
        tracking.log_artifact(EVAL_DIR / name / "summary.json")
        tracking.log_artifact(EVAL_DIR / name / "per_image.csv")
    return summary
