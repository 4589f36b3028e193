"""``mlflow models serve`` of a few-shot model in a process that cannot import the project (for
the tests and ``bench/serving.py``): proof that the logged model stands on its own.

The server runs in a scratch folder with a ``sitecustomize`` on its ``PYTHONPATH`` that refuses
any import of ``pipeline`` (the shared virtualenv has the project installed, so an unset
``PYTHONPATH`` alone would not keep it out), with the virtualenv's ``bin/`` on ``PATH``.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

#: Refuses the project's package in the server process and its workers.
BLOCKER = '''import sys


class _NoProject:
    """The served model must not need the project: any import of it fails here."""

    def find_spec(self, name, path=None, target=None):
        if name == "pipeline" or name.startswith("pipeline."):
            raise ImportError(f"{name}: the project is not importable in this server")
        return None


sys.meta_path.insert(0, _NoProject())
'''


def stop_group(proc: subprocess.Popen | None, timeout: float = 20) -> None:
    """End a server started in a session of its own (``start_new_session=True``) with its
    workers: SIGTERM to the group, SIGKILL if it has not ended within ``timeout`` seconds."""
    if proc is None or proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ModelServer:
    """A real ``mlflow models serve -m MODEL --env-manager local`` on a free 127.0.0.1 port."""

    def __init__(self, model_uri: str, tracking_uri: str | None = None,
                 workdir: Path | None = None, tf_threads: int | None = None):
        self.model_uri, self.tracking_uri = model_uri, tracking_uri
        #: TensorFlow's intra- and inter-op threads in the server (None: its default).
        self.tf_threads = tf_threads
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="serve-"))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    @property
    def log_file(self) -> Path:
        return self.workdir / "server.log"

    def start(self, timeout: float = 240) -> float:
        """Start it and wait for ``/health``; return the seconds that took."""
        blocker = self.workdir / "no_project"
        blocker.mkdir(parents=True, exist_ok=True)
        (blocker / "sitecustomize.py").write_text(BLOCKER)
        bin_dir = Path(sys.executable).parent
        env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
        env |= {"PYTHONPATH": str(blocker), "PATH": f"{bin_dir}{os.pathsep}{env.get('PATH', '')}"}
        if self.tracking_uri:
            env["MLFLOW_TRACKING_URI"] = self.tracking_uri
        if self.tf_threads:
            env |= {"TF_NUM_INTRAOP_THREADS": str(self.tf_threads),
                    "TF_NUM_INTEROP_THREADS": str(self.tf_threads)}
        start = time.perf_counter()
        self.proc = subprocess.Popen(
            [str(bin_dir / "mlflow"), "models", "serve", "-m", self.model_uri, "--env-manager",
             "local", "-h", "127.0.0.1", "-p", str(self.port)],
            cwd=self.workdir, env=env, stdout=subprocess.DEVNULL,
            stderr=open(self.log_file, "ab"), start_new_session=True)  # noqa: SIM115
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and self.proc.poll() is None:
            try:
                with urllib.request.urlopen(f"{self.url}/health", timeout=2) as r:
                    if r.status == 200:
                        return time.perf_counter() - start
            except OSError:
                time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"mlflow models serve did not start:\n"
                           f"{self.log_file.read_text()[-3000:]}")

    def post(self, payload: Any, timeout: float = 120) -> tuple[int, Any]:
        """POST a JSON request to ``/invocations``; (HTTP status, decoded JSON answer)."""
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        request = urllib.request.Request(f"{self.url}/invocations", data=body,
                                         headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    def stop(self) -> None:
        stop_group(self.proc)
        self.proc = None

    def __enter__(self) -> ModelServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
