"""Experiment tracking with MLflow: one parent run per pipeline run, one child run per stage.

* Backend: ``sqlite:///<repo root>/mlflow.db`` unless ``MLFLOW_TRACKING_URI`` says otherwise
  (an ``http(s)://`` server or another database). MLflow's file store is refused: it is
  deprecated and slow. Artifacts of a sqlite backend go to ``mlartifacts/`` beside the database.
* ``FACEINPAINT_MLFLOW=0`` turns tracking off completely; every function here is then a no-op
  and ``mlflow`` is never imported (importing it costs seconds).
* Parent run, first match wins: an MLflow run already active in this process;
  ``FACEINPAINT_PARENT_RUN_ID``; else a run recorded in ``artifacts/mlflow_parent_run.txt`` for
  the current *pipeline run*, created by the first stage that finds none. The pipeline run is
  ``FACEINPAINT_PIPELINE_RUN`` if set, else ``DVC_EXP_NAME`` (``dvc exp run``), else the
  ``dvc`` process that runs this stage (``dvc repro``; found through ``/proc``). Outside any
  pipeline the stage's run has no parent.
* Tags of every stage run: ``model``, ``stage``, ``dvc_stage``, ``profile``, ``git_commit``,
  ``git_dirty``, ``pipeline_run``.

Browse with ``faceinpaint ui`` (``mlflow server`` on this database, listening on 127.0.0.1).
"""

from __future__ import annotations

import contextlib
import os
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np

ENV_ENABLED = "FACEINPAINT_MLFLOW"
ENV_PARENT_RUN = "FACEINPAINT_PARENT_RUN_ID"
ENV_PIPELINE_RUN = "FACEINPAINT_PIPELINE_RUN"
PARENT_RUN_FILE = Path("artifacts/mlflow_parent_run.txt")
DEFAULT_EXPERIMENT = "faceinpaint-repro"

_active_run_id: str | None = None  # set while start_run's block runs; lets the loggers skip importing mlflow otherwise


class TrackingError(RuntimeError):
    """Tracking is misconfigured (e.g. a file-store URI)."""


def enabled() -> bool:
    return os.environ.get(ENV_ENABLED, "1").strip().lower() not in {"0", "false", "no", "off"}


def repo_root() -> Path:
    """The nearest folder at or above the working directory holding ``dvc.yaml`` (else the cwd)."""
    cwd = Path.cwd().resolve()
    for folder in (cwd, *cwd.parents):
        if (folder / "dvc.yaml").is_file():
            return folder
    return cwd


def tracking_uri() -> str:
    uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{repo_root() / 'mlflow.db'}"
    if urlparse(uri).scheme in {"", "file"}:
        raise TrackingError(
            f"MLFLOW_TRACKING_URI={uri!r} points at MLflow's file store, which this suite does not use; "
            "set a database such as sqlite:///mlflow.db or a server http://127.0.0.1:5000")
    return uri


def _artifact_location(uri: str) -> str | None:
    """Artifacts of a sqlite backend live beside the database; a server chooses its own."""
    if uri.startswith("sqlite:///"):
        return (Path(uri[len("sqlite:///"):]).resolve().parent / "mlartifacts").as_uri()
    return None


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=repo_root(), capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def _dvc_ancestor() -> str | None:
    """``dvc-<pid>-<start ticks>`` of the ``dvc`` process running this stage (Linux ``/proc``)."""
    pid = os.getppid()
    while pid > 1:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return None
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "; comm may contain spaces
        if any(Path(a.decode(errors="replace")).name == "dvc" for a in argv[:3]):
            return f"dvc-{pid}-{fields[19]}"  # field 22 of stat: start time, makes the id unique
        pid = int(fields[1])
    return None


def pipeline_run_key() -> str | None:
    """Identifies the pipeline invocation this process belongs to, or ``None`` outside one."""
    if os.environ.get(ENV_PIPELINE_RUN):
        return os.environ[ENV_PIPELINE_RUN]
    if os.environ.get("DVC_EXP_NAME"):
        return f"exp-{os.environ['DVC_EXP_NAME']}"
    if os.environ.get("DVC_STAGE"):
        return _dvc_ancestor()
    return None


def _read_parent_file(path: Path) -> dict[str, str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return {}
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _parent_run_id(client, experiment_id: str, uri: str, tags: Mapping[str, str]) -> str | None:
    if os.environ.get(ENV_PARENT_RUN):
        return os.environ[ENV_PARENT_RUN]
    key = pipeline_run_key()
    if key is None:
        return None
    path = repo_root() / PARENT_RUN_FILE
    recorded = _read_parent_file(path)
    if recorded.get("pipeline_run") == key and recorded.get("tracking_uri") == uri:
        return recorded["run_id"]
    parent = client.create_run(experiment_id, run_name=f"pipeline {key}", tags={**tags, "pipeline_run": key})
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(f"pipeline_run={key}\nrun_id={parent.info.run_id}\ntracking_uri={uri}\n")
    os.replace(tmp, path)
    return parent.info.run_id


@contextlib.contextmanager
def start_run(stage: str, model: str, params: Mapping[str, Any], tags: Mapping[str, str] | None = None) -> Iterator[str | None]:
    """Open the MLflow run of one stage, nested under the pipeline's parent run.

    ``params`` (flat ``key: value``) are logged as run parameters; ``params["profile"]`` (if
    present) also becomes the ``profile`` tag. Yields the run id, or ``None`` when tracking is
    off. The run ends FINISHED, or FAILED / KILLED if the block raises.
    """
    global _active_run_id
    if not enabled():
        yield None
        return
    import mlflow
    from mlflow import MlflowClient

    uri = tracking_uri()
    mlflow.set_tracking_uri(uri)
    client = MlflowClient(uri)
    name = os.environ.get("MLFLOW_EXPERIMENT_NAME", DEFAULT_EXPERIMENT)
    experiment = client.get_experiment_by_name(name)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(name, artifact_location=_artifact_location(uri))
    mlflow.set_experiment(experiment_id=experiment_id)

    common = {
        "git_commit": _git("rev-parse", "HEAD") or "none",
        "git_dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower(),
        "profile": str(params.get("profile", "")),
    }
    key = pipeline_run_key()
    run_tags = {**common, "model": model, "stage": stage, "dvc_stage": os.environ.get("DVC_STAGE", stage),
                "pipeline_run": key or "", **(tags or {})}
    active = mlflow.active_run()
    if active is not None:
        run = mlflow.start_run(run_name=stage, nested=True, tags=run_tags)
        parent_id = None
    else:
        parent_id = _parent_run_id(client, experiment_id, uri, common)
        run = mlflow.start_run(run_name=stage, parent_run_id=parent_id, tags=run_tags)
    _active_run_id = run.info.run_id
    status = "FINISHED"
    try:
        mlflow.log_params({k: _param_value(v) for k, v in params.items()})
        yield run.info.run_id
    except KeyboardInterrupt:
        status = "KILLED"
        raise
    except SystemExit as exit_:
        status = "FINISHED" if exit_.code in (0, None) else "KILLED"
        raise
    except BaseException:
        status = "FAILED"
        raise
    finally:
        _active_run_id = None
        mlflow.end_run(status)
        if parent_id is not None:
            client.set_terminated(parent_id, status)  # the parent's end time follows its last stage


def _param_value(value: Any) -> str:
    text = str(value)
    return text if len(text) <= 6000 else text[:5997] + "..."


def log_metrics(metrics: Mapping[str, float], step: int) -> None:
    """Log scalar metrics at ``step`` to the run opened by :func:`start_run` (else nothing)."""
    if _active_run_id is None:
        return
    import mlflow

    mlflow.log_metrics({k: float(v) for k, v in metrics.items()}, step=step)


def image_to_uint8(image) -> np.ndarray:
    """``H x W x 3`` uint8 array from such an array or a ``3 x H x W`` tensor in [-1, 1]."""
    if hasattr(image, "detach"):  # a torch tensor, in the suite's [-1, 1] convention
        from .data import to_uint8_image  # imported here: a tensor means torch is loaded already

        image = to_uint8_image(image.detach().float())
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 uint8 image or a 3 x H x W tensor, got {image.dtype} {image.shape}")
    return image


def log_image(image, name: str) -> None:
    """Log an image (e.g. a sample grid) as artifact ``name`` (``.png``); see :func:`image_to_uint8`."""
    if _active_run_id is None:
        return
    import mlflow

    mlflow.log_image(image_to_uint8(image), artifact_file=name)


def log_artifact(path: str | Path, artifact_path: str | None = None) -> None:
    """Copy a file into the current run's artifacts (under ``artifact_path`` if given)."""
    if _active_run_id is None:
        return
    import mlflow

    mlflow.log_artifact(str(path), artifact_path=artifact_path)
