"""Command line: ``faceinpaint <step>``; each DVC stage calls one of these."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

import click

from .config import ConfigError, load_config


def _config(params: str, profile: str | None):
    try:
        return load_config(params, profile)
    except ConfigError as err:
        raise click.ClickException(str(err)) from None


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Debug logging.")
def cli(verbose: bool) -> None:
    """faceinpaint-repro: prepare data, train, evaluate, report, inpaint."""
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")


params_option = click.option("--params", default="params.yaml", show_default=True, help="Parameters file.")
profile_option = click.option("--profile", type=click.Choice(["smoke", "cpu", "paper"]), default=None, help="Override params.yaml's profile.")


@cli.command()
@params_option
@profile_option
@click.option("--out", default="artifacts/prepared", show_default=True, type=click.Path(file_okay=False))
def prepare(params: str, profile: str | None, out: str) -> None:
    """Face crops at the profile's resolution, square and irregular masks."""
    from .data import DataError, prepare as run_prepare
    from .masks import MaskError

    cfg = _config(params, profile)
    try:
        info = run_prepare(cfg, Path(out))
    except (DataError, MaskError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"prepared {info['splits']['train']['count']} train / {info['splits']['test']['count']} test images at {cfg.resolution}x{cfg.resolution} into {out}")


@cli.command("identity-auc")
@params_option
@profile_option
def identity_auc(params: str, profile: str | None) -> None:
    """ROC AUC of the face-recognition network on the prepared test images."""
    from .stages import identity_check

    r = identity_check(_config(params, profile))
    click.echo(f"identity ROC AUC {r['roc_auc']:.4f} at {r['resolution']}x{r['resolution']} ({r['images']} images)")


from .models import INPAINTERS, TRAINED  # noqa: E402 - the registry (light, no torch)

MODEL_CHOICES = list(TRAINED)


@cli.command()
@click.argument("model", type=click.Choice(MODEL_CHOICES))
@params_option
@profile_option
@click.option("--device", default="cpu", show_default=True, help="torch device (cuda for the paper profile).")
def train(model: str, params: str, profile: str | None, device: str) -> None:
    """Train MODEL (resumes from its last checkpoint; a larger budget continues the run)."""
    from .stages import train_stage

    cfg = _config(params, profile)
    metrics = train_stage(cfg, model, device)
    click.echo(f"{model}: {metrics['steps']} steps, {metrics['images_seen']} images in {metrics['train_time_s']:.0f} s ({metrics['stopped_by']})")


@cli.command()
@click.argument("model", type=click.Choice([m for m in TRAINED if m != "stylegan"]))
@params_option
@profile_option
def finalize(model: str, params: str, profile: str | None) -> None:
    """Declare MODEL's finished run final: check its export against its last checkpoint, then
    delete its training state (the export is the model from then on; see README, model store)."""
    from .stages import FinalRunError, finalize_run

    try:
        final = finalize_run(_config(params, profile), model)
    except FinalRunError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"{model}: final at step {final['step']} ({final['images_seen']} images); training state deleted")


@cli.command("test-features")
@params_option
@profile_option
@click.option("--device", default="cpu", show_default=True)
def features_command(params: str, profile: str | None, device: str) -> None:
    """FD features and identity embeddings of the original test images (every evaluation reads them)."""
    from .evaluate import TEST_FEATURES_DIR, write_test_features

    feats = write_test_features(_config(params, profile), TEST_FEATURES_DIR, device)
    click.echo(f"wrote {TEST_FEATURES_DIR}: " + ", ".join(f"{k} {v} images" for k, v in feats.meta["sets"].items()))


@cli.command()
@click.argument("model", type=click.Choice(list(INPAINTERS)))
@params_option
@profile_option
@click.option("--device", default="cpu", show_default=True)
def evaluate(model: str, params: str, profile: str | None, device: str) -> None:
    """Evaluate MODEL on the test split (ten squares and irregular masks)."""
    from .evaluate import RealFeaturesError, run
    from .recipes import ModelMissingError

    cfg = _config(params, profile)
    try:
        s = run(cfg, model)
    except (ModelMissingError, RealFeaturesError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"{model}: PSNR {s['psnr']:.3f}  SSIM {s['ssim']:.4f}  ID {s['id_sim']:.4f}  ({s['n_images']} images, square masks)")


@cli.command()
@params_option
@profile_option
@click.option("--eval-root", default="artifacts/eval", show_default=True)
@click.option("--out", default="reports", show_default=True)
@click.option("--plots", default="reports/plots", show_default=True, help="Training curves (train_<model>.csv) for loss_curves.png.")
def report(params: str, profile: str | None, eval_root: str, out: str, plots: str) -> None:
    """Tables 1-2, Figures 3 and 5, claims C1-C3, irregular-mask bins."""
    from .report import build_report

    cfg = _config(params, profile)
    written = build_report(eval_root, out, n_bootstrap=cfg.evaluate.bootstrap, n_bootstrap_fd=cfg.evaluate.bootstrap_fd, seed=cfg.seed,
                           curve_images=cfg.evaluate.curve_images, profile=cfg.profile_name,
                           plots_dir=plots, resolution=cfg.resolution,
                           texture_widths=(cfg.texture.base_width, cfg.texture.max_width),
                           training_masks=(cfg.masks.train_irregular_prob, cfg.masks.square_min_frac, cfg.masks.square_max_frac))
    click.echo("wrote " + ", ".join(sorted(str(p) for p in written.values())))


@cli.command()
@click.argument("image", type=click.Path(dir_okay=True))
@click.argument("mask", type=click.Path(dir_okay=True))
@click.option("--model", "model_name", default="full", show_default=True,
              type=click.Choice(list(INPAINTERS)))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output image file.")
@params_option
@profile_option
def inpaint(image: str, mask: str, model_name: str, output: str, params: str, profile: str | None) -> None:
    """Inpaint IMAGE where MASK is white (hole) with a trained model; writes OUTPUT."""
    from .inference import InpaintError, inpaint_file

    cfg = _config(params, profile)
    try:
        inpaint_file(cfg, image, mask, model_name, output)
    except InpaintError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"wrote {output}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (loopback by default).")
@click.option("--port", default=5000, show_default=True, type=click.IntRange(1, 65535))
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback --host (the UI has no authentication).")
def ui(host: str, port: int, allow_remote: bool) -> None:
    """Browse every run in the MLflow UI (SQLite backend mlflow.db)."""
    from .ui import UIError, serve, url

    try:
        click.echo(f"MLflow UI on {url(host, port)} (Ctrl-C stops it)")
        code = serve(host, port, allow_remote)
    except UIError as err:
        raise click.ClickException(str(err)) from None
    raise SystemExit(code)


@cli.command("check-metrics")
@click.argument("current", type=click.Path())
@click.argument("baseline", type=click.Path())
def check_metrics(current: str, baseline: str) -> None:
    """Fail (exit 1) when a metric of CURRENT differs from BASELINE (exact, see faceinpaint.regression)."""
    from .regression import check

    try:
        passed, table = check(current, baseline)
    except (FileNotFoundError, ValueError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(table)
    if not passed:
        raise click.ClickException(f"metrics differ from {baseline} (see the table above); if the change is deliberate, regenerate it with scripts/smoke_baseline.py")


def main() -> None:
    cli(prog_name="faceinpaint")


if __name__ == "__main__":
    sys.exit(main())
