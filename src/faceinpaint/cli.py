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
device_option = click.option("--device", default=None, help="torch device (cpu, cuda, cuda:N); default: params.yaml's `device`.")


def _device(cfg, device: str | None) -> str:
    """``--device`` if given (checked like params.yaml's), else the config's ``device``."""
    from .config import check_device, device_available

    if device is None:
        return cfg.device
    try:
        check_device(device)
        device_available(device)
    except (ValueError, ConfigError) as err:
        raise click.ClickException(f"--device: {err}") from None
    return device


def _relaunch_under_torchrun(nproc: int) -> None:
    """Replace this process by ``torchrun --standalone --nproc-per-node=nproc`` running the same
    command (each worker then sees ``WORLD_SIZE`` and trains its share; docs/GPU.md)."""
    import os

    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
            "-m", "faceinpaint.cli", *sys.argv[1:]]
    logging.getLogger(__name__).info("nproc %d: relaunching through %s", nproc, " ".join(argv[1:]))
    sys.stdout.flush()
    sys.stderr.flush()
    os.execv(sys.executable, argv)
profile_option = click.option("--profile", type=click.Choice(["smoke", "cpu", "paper"]), default=None, help="Override params.yaml's profile.")


@cli.command()
@params_option
@profile_option
@click.option("--out", default="artifacts/prepared", show_default=True, type=click.Path(file_okay=False))
def prepare(params: str, profile: str | None, out: str) -> None:
    """Face crops at the profile's resolution, square and irregular masks."""
    from .data import DataError, prepare as run_prepare
    from .checkpoint import detach_links
    from .masks import MaskError

    cfg = _config(params, profile)
    detach_links(out)  # never write into a file linked to the DVC cache
    try:
        info = run_prepare(cfg, Path(out))
    except (DataError, MaskError) as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"prepared {info['splits']['train']['count']} train / {info['splits']['test']['count']} test images at {cfg.resolution}x{cfg.resolution} into {out}")


@cli.command("identity-auc")
@params_option
@profile_option
@device_option
def identity_auc(params: str, profile: str | None, device: str | None) -> None:
    """ROC AUC of the face-recognition network on the prepared test images."""
    from .stages import identity_check

    cfg = _config(params, profile)
    r = identity_check(cfg, _device(cfg, device))
    click.echo(f"identity ROC AUC {r['roc_auc']:.4f} at {r['resolution']}x{r['resolution']} ({r['images']} images)")


@cli.command("unseen")
@params_option
@profile_option
@device_option
@click.option("--out", default="artifacts/unseen", show_default=True, type=click.Path(file_okay=False))
@click.option("--reports", default="reports/unseen", show_default=True, type=click.Path(file_okay=False))
def unseen_command(params: str, profile: str | None, device: str | None, out: str, reports: str) -> None:
    """The unseen-people test set: public faces of people outside the training identities,
    framed like the prepared crops (eye positions), checked with the face-recognition net."""
    from .data import DataError
    from .pretrained import WeightsError
    from .unseen import build_unseen, clear

    cfg = _config(params, profile)
    clear(Path(out))  # unlinks a previous run's files (never writes into a file DVC linked to its cache)
    try:
        r = build_unseen(cfg, Path(out), Path(reports), device=_device(cfg, device))
    except (DataError, WeightsError) as err:
        raise click.ClickException(str(err)) from None
    k = r["framing"]["kept"]
    click.echo(f"unseen set: {k['count']} faces at {cfg.resolution}x{cfg.resolution} into {out} "
               f"(of {r['framing']['originals']} originals; identity threshold {r['identity']['threshold']['value']}, "
               f"{r['identity']['passed']} passed); mean eye offset {k['offset_px']} px")


from .models import INPAINTERS, TRAINED  # noqa: E402 - the registry (light, no torch)

MODEL_CHOICES = list(TRAINED)


@cli.command()
@click.argument("model", type=click.Choice(MODEL_CHOICES))
@params_option
@profile_option
@device_option
def train(model: str, params: str, profile: str | None, device: str | None) -> None:
    """Train MODEL (resumes from its last checkpoint; a larger budget continues the run).
    With params.yaml's ``nproc`` above 1 (and not already under torchrun), it relaunches itself
    through ``torchrun --standalone --nproc-per-node=nproc``."""
    import os

    from .stages import train_stage

    cfg = _config(params, profile)
    device = _device(cfg, device)
    if cfg.nproc > 1 and "WORLD_SIZE" not in os.environ:
        _relaunch_under_torchrun(cfg.nproc)
    from .stages import TrainingStateMissing

    try:
        metrics = train_stage(cfg, model, device)
    except TrainingStateMissing as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"{model}: {metrics['steps']} steps, {metrics['images_seen']} images in {metrics['train_time_s']:.0f} s ({metrics['stopped_by']})")


@cli.command()
@click.argument("model", type=click.Choice([m for m in TRAINED if m != "stylegan"]))
@params_option
@profile_option
def finalize(model: str, params: str, profile: str | None) -> None:
    """Declare MODEL's finished run final: check its export against its last checkpoint, then
    delete its training state (the export is the model from then on; see docs/STORE.md)."""
    from .stages import FinalRunError, finalize_run

    try:
        final = finalize_run(_config(params, profile), model)
    except FinalRunError as err:
        raise click.ClickException(str(err)) from None
    click.echo(f"{model}: final at step {final['step']} ({final['images_seen']} images); training state deleted")


@cli.command("test-features")
@params_option
@profile_option
@device_option
def features_command(params: str, profile: str | None, device: str | None) -> None:
    """FD features and identity embeddings of the original test images (every evaluation reads them)."""
    from .checkpoint import detach_links
    from .evaluate import TEST_FEATURES_DIR, write_test_features

    cfg = _config(params, profile)
    detach_links(TEST_FEATURES_DIR)
    feats = write_test_features(cfg, TEST_FEATURES_DIR, _device(cfg, device))
    click.echo(f"wrote {TEST_FEATURES_DIR}: " + ", ".join(f"{k} {v} images" for k, v in feats.meta["sets"].items()))


@cli.command()
@click.argument("model", type=click.Choice(list(INPAINTERS)), required=False)
@params_option
@profile_option
@device_option
@click.option("--predictions", type=click.Path(file_okay=False), default=None,
              help="Score this folder of an external method's predictions for the exported benchmark instead of MODEL.")
@click.option("--name", "method_name", default=None, help="With --predictions: the method's name (artifacts/eval/NAME/).")
def evaluate(model: str | None, params: str, profile: str | None, device: str | None, predictions: str | None,
             method_name: str | None) -> None:
    """Evaluate MODEL on the test split (ten squares and irregular masks), or with --predictions
    DIR --name NAME a folder of an external method's outputs, under the same protocol."""
    from .benchmark import BenchmarkError
    from .evaluate import RealFeaturesError, run
    from .checkpoint import detach_links
    from .evaluate import EVAL_DIR
    from .recipes import ModelMissingError

    if (model is None) == (predictions is None) or (predictions is None) != (method_name is None):
        raise click.UsageError("give MODEL, or --predictions DIR with --name NAME")
    model = model or method_name
    cfg = _config(params, profile)
    try:
        if predictions is not None:
            from .evaluate import check_external_name

            check_external_name(model)  # before any path is built from it
        detach_links(EVAL_DIR / model)
        s = run(cfg, model, _device(cfg, device), predictions=predictions)
    except (ModelMissingError, RealFeaturesError, BenchmarkError) as err:
        raise click.ClickException(str(err)) from None
    if "known_pixels" in s and s["known_pixels"]["changed_fraction"] > 0:
        click.echo(f"{model}: the predictions changed {100 * s['known_pixels']['changed_fraction']:.2f}% of the known "
                   "pixel values; scored on the composite with the originals' known pixels")
    click.echo(f"{model}: PSNR {s['psnr']:.3f}  SSIM {s['ssim']:.4f}  ID {s['id_sim']:.4f}  ({s['n_images']} images, square masks)")


@cli.group()
def benchmark() -> None:
    """The suite's benchmark as files, for methods outside the code base."""


@benchmark.command("export")
@click.argument("out_dir", type=click.Path(file_okay=False))
@params_option
@profile_option
def benchmark_export(out_dir: str, params: str, profile: str | None) -> None:
    """Write the masked test inputs, masks, originals and a hashed manifest to OUT_DIR."""
    from .benchmark import export
    from .data import PREPARED_DIR, PreparedData

    manifest = export(_config(params, profile), Path(out_dir), PreparedData(PREPARED_DIR))
    click.echo(f"wrote {out_dir}: " + ", ".join(f"{k} {v} files" for k, v in manifest["sets"].items()))


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
                           training_masks=(cfg.masks.train_irregular_prob, cfg.masks.square_min_frac, cfg.masks.square_max_frac),
                           external=cfg.external_methods)
    click.echo("wrote " + ", ".join(sorted(str(p) for p in written.values())))


@cli.command()
@click.argument("image", type=click.Path(dir_okay=True))
@click.argument("mask", type=click.Path(dir_okay=True))
@click.option("--model", "model_name", default="full", show_default=True,
              type=click.Choice(list(INPAINTERS)))
@click.option("-o", "--output", required=True, type=click.Path(dir_okay=False), help="Output image file.")
@params_option
@profile_option
@device_option
def inpaint(image: str, mask: str, model_name: str, output: str, params: str, profile: str | None, device: str | None) -> None:
    """Inpaint IMAGE where MASK is white (hole) with a trained model; writes OUTPUT."""
    from .inference import InpaintError, inpaint_file

    cfg = _config(params, profile)
    notes: list[str] = []
    try:
        inpaint_file(cfg, image, mask, model_name, output, _device(cfg, device), notes=notes)
    except InpaintError as err:
        raise click.ClickException(str(err)) from None
    finally:
        for i, note in enumerate(notes):  # the model's resolution, and a warning for a large enlarged hole
            click.echo(("warning: " if i else "") + note, err=True)
    click.echo(f"wrote {output}")


@cli.command()
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to listen on (loopback unless --allow-remote).")
@click.option("--port", default=8000, show_default=True, type=int)
@click.option("--allow-remote", is_flag=True, help="Allow a non-loopback --host (the page has no authentication).")
@params_option
@profile_option
@device_option
def demo(host: str, port: int, allow_remote: bool, params: str, profile: str | None, device: str | None) -> None:
    """A local web page: open a photo or pick a test face, paint the hole, compare the models."""
    from .demo import DemoError, serve

    cfg = _config(params, profile)
    try:
        serve(cfg, host, port, allow_remote, _device(cfg, device))
    except DemoError as err:
        raise click.ClickException(str(err)) from None


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


@cli.command()
@click.argument("diagnostic", type=click.Choice(["stage2-residual", "inversion-oracle"]))
@params_option
@profile_option
@click.option("--out", default="reports/diagnostics", show_default=True, type=click.Path(file_okay=False))
@click.option("--images", type=click.IntRange(min=0), default=None, help="Test images (default: the profile's diagnostics block).")
@click.option("--finetune-steps", type=click.IntRange(min=0), default=None,
              help="stage2-residual: fine-tune steps per loss reading (default: diagnostics.residual_finetune_steps).")
@click.option("--device", "diag_device", default="cpu", show_default=True)
def diagnose(diagnostic: str, params: str, profile: str | None, out: str, images: int | None,
             finetune_steps: int | None, diag_device: str) -> None:
    """Why C1 fails: stage 1 against Ours (stage2-residual) or the masked W+ inversion (inversion-oracle)."""
    from .diagnostics import inversion_oracle, stage2_residual
    from .recipes import ModelMissingError

    cfg = _config(params, profile)
    try:
        if diagnostic == "stage2-residual":
            paths = stage2_residual(cfg, Path(out), images, finetune_steps, diag_device)
        else:
            paths = inversion_oracle(cfg, Path(out), images, diag_device)
    except ModelMissingError as err:
        raise click.ClickException(str(err)) from None
    click.echo("wrote " + ", ".join(str(p) for p in paths.values()))


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
