"""The MLflow UI over the suite's SQLite tracking database, on loopback unless asked otherwise.

``faceinpaint ui`` runs ``mlflow server`` on the database every stage logs to
(:func:`faceinpaint.tracking.tracking_uri`, ``sqlite:///<repo root>/mlflow.db``), with the
``mlartifacts/`` folder beside it as artifact root, bound to 127.0.0.1.

The MLflow server has no authentication, so another interface needs ``allow_remote=True``.
MLflow 3 needs no extra flag to serve on loopback: its security middleware (``Host`` header
check against DNS rebinding, CORS) admits loopback names by default. The command narrows the
admitted ``Host`` headers to the loopback names (and ``host``) with this port; MLflow's default
also admits any port and every private-network address. The middleware is never disabled.

MLflow's job runner (GenAI scorers and trace roll-ups, seven worker processes) is switched off:
the runs of this suite give it nothing to do.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from .tracking import _artifact_location, tracking_uri

LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
WILDCARD_HOSTS = ("0.0.0.0", "::")

log = logging.getLogger(__name__)


class UIError(ValueError):
    """The UI cannot be served as asked; the message says why."""


def _host_header(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def url(host: str = "127.0.0.1", port: int = 5000) -> str:
    """The address a browser on this machine opens for a server bound to ``host:port``."""
    return f"http://{_host_header('127.0.0.1' if host in WILDCARD_HOSTS else host, port)}"


def server_command(host: str = "127.0.0.1", port: int = 5000, backend_uri: str | None = None,
                   allow_remote: bool = False) -> list[str]:
    """The ``mlflow server`` command line serving ``backend_uri`` (default: the suite's database).

    Raises :class:`UIError` for a non-loopback ``host`` without ``allow_remote``, a port outside
    1..65535, or a backend that is not a SQLite database.
    """
    if host not in LOOPBACK_HOSTS and not allow_remote:
        raise UIError(f"refusing to serve the MLflow UI on {host!r}: it has no authentication, so it listens on "
                      f"loopback ({', '.join(LOOPBACK_HOSTS)}) unless remote access is asked for explicitly "
                      "(allow_remote=True, `faceinpaint ui --allow-remote`)")
    if not 0 < port < 65536:
        raise UIError(f"port must be in 1..65535, got {port}")
    uri = backend_uri or tracking_uri()
    if not uri.startswith("sqlite:///"):
        hint = " (that is already a server: open it in the browser)" if uri.startswith(("http://", "https://")) else ""
        raise UIError(f"backend {uri!r}: the suite's runs live in a SQLite database (sqlite:///...){hint}")
    artifacts = _artifact_location(uri)
    command = ["env", "MLFLOW_SERVER_ENABLE_JOB_EXECUTION=false",
               sys.executable, "-m", "mlflow", "server", "--backend-store-uri", uri,
               "--default-artifact-root", artifacts, "--artifacts-destination", artifacts,
               "--host", host, "--port", str(port), "--workers", "1"]
    if host not in WILDCARD_HOSTS:
        # a wildcard bind can be reached under any name; there MLflow's default list
        # (loopback and private networks, or MLFLOW_SERVER_ALLOWED_HOSTS) applies
        names = dict.fromkeys(_host_header(name, port) for name in (*LOOPBACK_HOSTS, host))
        command += ["--allowed-hosts", ",".join(names)]
    return command


def serve(host: str = "127.0.0.1", port: int = 5000, allow_remote: bool = False) -> int:
    """Run the MLflow UI on the suite's database in the foreground until Ctrl-C.

    Returns the server's exit code, 0 after Ctrl-C. Raises :class:`UIError` (see
    :func:`server_command`), also when the database does not exist yet, which usually means the
    wrong working directory.
    """
    command = server_command(host, port, allow_remote=allow_remote)
    database = Path(command[command.index("--backend-store-uri") + 1][len("sqlite:///"):])
    if not database.is_file():
        raise UIError(f"no tracking database at {database}: run a stage first (or start from the repository, "
                      "or set MLFLOW_TRACKING_URI=sqlite:///path/to/mlflow.db)")
    log.info("MLflow UI on %s (Ctrl-C stops it)", url(host, port))
    server = subprocess.Popen(command)
    try:
        return server.wait()
    except KeyboardInterrupt:
        # the terminal sent SIGINT to the server as well: let it shut down its workers
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.terminate()
            server.wait()
        return 0


# ------------------------------------------------- the UI in the background, rendered headless
# (scripts/mlflow_screenshot.py and tests/test_mlflow_ui.py)

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--disable-dev-shm-usage")


def chromium_path() -> str | None:
    """Debian's headless-capable Chromium (``scripts/setup.sh`` installs it), or ``None``."""
    return "/usr/bin/chromium" if os.access("/usr/bin/chromium", os.X_OK) else shutil.which("chromium")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_background(command: list[str], log: Path, **popen) -> subprocess.Popen:
    """Start ``command`` in its own process group, its output to ``log`` (a pipe nobody reads
    would fill up with request logs and stall the server)."""
    with Path(log).open("w") as out:
        return subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, **popen)


def wait_until_up(health: str, proc: subprocess.Popen, log: Path, seconds: float = 90) -> None:
    """Poll ``health`` until it answers 200; :class:`UIError` with the log's tail if the server
    exits first or does not answer within ``seconds``."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise UIError(f"mlflow server exited with {proc.returncode}: {Path(log).read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(health, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise UIError(f"{health} did not answer within {seconds} s")


def stop_group(proc: subprocess.Popen) -> None:
    """End the process group started for ``proc`` (mlflow server runs uvicorn as a child)."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # children that outlived the leader
    except ProcessLookupError:
        pass
    proc.wait()


# MLflow's runs page, for HeadlessPage.evaluate: the run-name cell's expander (only parent runs
# have one), and the ids of the runs shown, in order (the grid draws each row once per column section)
MLFLOW_RUN_EXPANDER = "button[data-component-id*='runnamecellrenderer']"
MLFLOW_SHOWN_RUN_IDS = ("[...new Set([...document.querySelectorAll('[role=row][row-id]')]"
                        ".map(r => r.getAttribute('row-id')))]")


class HeadlessPage:
    """One headless Chromium tab driven over the DevTools protocol, for what a command line alone
    cannot do: click (expand the nested runs) before the screenshot. The protocol's websocket is
    aiohttp's client (already installed with DVC); Chromium listens on a loopback port it picks.

        with HeadlessPage((1900, 1100)) as page:
            page.goto(url, ready="document.querySelectorAll('[role=row]').length > 2")
            page.evaluate("document.querySelector('button').click()")
            page.screenshot(Path("shot.png"))
    """

    def __init__(self, size: tuple[int, int] = (1600, 1000), chromium: str | None = None, timeout: float = 120):
        self.size, self.timeout = size, timeout
        self.chromium = chromium or chromium_path()
        if self.chromium is None:
            raise UIError("Debian's chromium is not installed (apt-get install chromium; scripts/setup.sh does it)")
        self._ids = 0

    def __enter__(self) -> "HeadlessPage":
        import asyncio
        import json
        import tempfile

        self._profile = tempfile.TemporaryDirectory()
        self._proc = subprocess.Popen(
            [self.chromium, *CHROMIUM_FLAGS, "--hide-scrollbars", f"--user-data-dir={self._profile.name}",
             "--remote-debugging-address=127.0.0.1", "--remote-debugging-port=0",
             f"--window-size={self.size[0]},{self.size[1]}", "about:blank"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            port_file = Path(self._profile.name) / "DevToolsActivePort"  # "<port>\n<browser path>" once listening
            deadline = time.monotonic() + 60
            while not (port_file.is_file() and len(port_file.read_text().split()) >= 2):
                if self._proc.poll() is not None or time.monotonic() > deadline:
                    raise UIError(f"{self.chromium} did not open its DevTools port (exit code {self._proc.poll()})")
                time.sleep(0.1)
            port = int(port_file.read_text().split()[0])
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=10) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            self._loop = asyncio.new_event_loop()
            self._ws_url = pages[0]["webSocketDebuggerUrl"]
            self._run(self._connect())
            self.call("Page.enable")
            # the viewport itself, not the window less Chromium's frame: screenshots are exactly this size
            self.call("Emulation.setDeviceMetricsOverride", width=self.size[0], height=self.size[1],
                      deviceScaleFactor=1, mobile=False)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        try:
            if getattr(self, "_loop", None) is not None:
                try:
                    self._run(self._disconnect())
                finally:
                    self._loop.close()
                    self._loop = None
        finally:
            stop_group(self._proc)
            self._profile.cleanup()

    def _run(self, coroutine):
        import asyncio

        return self._loop.run_until_complete(asyncio.wait_for(coroutine, self.timeout))

    async def _connect(self) -> None:
        import aiohttp

        self._session = aiohttp.ClientSession()
        self._ws = await self._session.ws_connect(self._ws_url, max_msg_size=0)

    async def _disconnect(self) -> None:
        if getattr(self, "_ws", None) is not None:
            await self._ws.close()
        if getattr(self, "_session", None) is not None:
            await self._session.close()

    async def _call(self, method: str, params: dict) -> dict:
        self._ids += 1
        await self._ws.send_json({"id": self._ids, "method": method, "params": params})
        while True:  # events arrive in between; the answer carries our id
            message = await self._ws.receive_json()
            if message.get("id") == self._ids:
                if "error" in message:
                    raise UIError(f"DevTools {method}: {message['error']}")
                return message.get("result", {})

    def call(self, method: str, **params) -> dict:
        """One DevTools protocol command; its result."""
        return self._run(self._call(method, params))

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page (promises awaited)."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in result:
            raise UIError(f"{expression[:80]!r} threw: {result['exceptionDetails'].get('text')}")
        return result["result"].get("value")

    def wait_for(self, expression: str, seconds: float = 60, what: str | None = None) -> None:
        """Poll ``expression`` until it is truthy; :class:`UIError` after ``seconds``."""
        deadline = time.monotonic() + seconds
        while not self.evaluate(expression):
            if time.monotonic() > deadline:
                raise UIError(f"{what or expression[:80]!r} not shown within {seconds} s")
            time.sleep(0.5)

    def goto(self, address: str, ready: str | None = None, seconds: float = 90) -> None:
        self.call("Page.navigate", url=address)
        if ready:
            self.wait_for(ready, seconds)

    def screenshot(self, out: Path) -> Path:
        import base64

        data = self.call("Page.captureScreenshot", format="png")["data"]
        Path(out).write_bytes(base64.b64decode(data))
        return Path(out)
