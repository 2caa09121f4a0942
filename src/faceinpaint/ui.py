"""The MLflow UI over the suite's SQLite tracking database, on loopback only by default.

``faceinpaint ui`` runs ``mlflow server`` with ``--backend-store-uri sqlite:///mlflow.db`` (the
database every stage logs to, :func:`faceinpaint.tracking.tracking_uri`) and the artifact
folder beside it, bound to 127.0.0.1. Another interface needs an explicit ``allow_remote``.
"""

from __future__ import annotations

import subprocess
import sys

from .tracking import _artifact_location, tracking_uri

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")


class UIError(ValueError):
    """The UI cannot be served as asked; the message says why."""


def server_command(host: str = "127.0.0.1", port: int = 5000, backend_uri: str | None = None,
                   allow_remote: bool = False) -> list[str]:
    """The ``mlflow server`` command line for the suite's tracking database."""
    if host not in LOOPBACK_HOSTS and not allow_remote:
        raise UIError(f"refusing to serve the MLflow UI on {host!r}: it has no authentication, so it "
                      f"listens on loopback ({', '.join(LOOPBACK_HOSTS)}) unless remote access is asked for explicitly")
    if not 0 < port < 65536:
        raise UIError(f"port must be in 1..65535, got {port}")
    uri = backend_uri or tracking_uri()
    if not uri.startswith("sqlite:"):
        raise UIError(f"backend {uri!r}: the suite's runs live in a SQLite database (sqlite:///...)")
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
               "--host", host, "--port", str(port), "--workers", "1"]
    artifacts = _artifact_location(uri)
    if artifacts:
        command += ["--default-artifact-root", artifacts, "--artifacts-destination", artifacts]
    if host in LOOPBACK_HOSTS:
        command += ["--allowed-hosts", f"127.0.0.1:{port},localhost:{port},[::1]:{port}"]
    return command


def serve(host: str = "127.0.0.1", port: int = 5000, allow_remote: bool = False) -> int:
    """Run the MLflow UI in the foreground until interrupted; returns its exit code."""
    return subprocess.call(server_command(host, port, allow_remote=allow_remote))
