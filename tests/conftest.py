"""Shared fixtures: configs composed in-process (one TensorFlow import for the whole session)
against a real MLflow store in a temporary folder."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from omegaconf import DictConfig

from pipeline import PROJECT_ROOT
from pipeline.config import Config, compose, validate
from pipeline.run import runtime_env

#: The Omniglot zips: ``$OMNIGLOT_ROOT``, else where this workplace keeps them
#: (``../shared/data/omniglot`` beside the project). Tests that need them skip without them.
OMNIGLOT_ROOT = Path(os.environ.get("OMNIGLOT_ROOT",
                                    PROJECT_ROOT.parent / "shared" / "data" / "omniglot"))

runtime_env.import_tensorflow()

#: Overrides that make any run tiny: few tasks, few iterations.
TINY = [
    "data.num_train_tasks=40", "data.num_test_tasks=12", "meta_train.iterations=20",
    "meta_train.meta_batch_size=4", "meta_test.scratch.steps=5", "meta_train.log_every=5",
]


_SCHEMA: list[Path] = []


def empty_store_schema() -> Path:
    """An MLflow SQLite database with its schema migrated and nothing else, made once per test
    process: MLflow's migrations take seconds on a fresh store, a copy of the file
    milliseconds (the runs' own experiment, with its artifact location, is made by the run)."""
    if not _SCHEMA:
        from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

        root = Path(tempfile.mkdtemp(prefix="store-schema-"))
        store = SqlAlchemyStore(f"sqlite:///{root}/mlflow.db", str(root / "artifacts"))
        store.engine.dispose()
        _SCHEMA.append(root / "mlflow.db")
    return _SCHEMA[0]


def store_overrides(root: Path, schema: bool = False) -> list[str]:
    """Point data, outputs and the MLflow store at ``root``; with ``schema``, the store starts
    as a copy of :func:`empty_store_schema` (for tests of runs, not of what a refused run
    leaves behind: nothing)."""
    db = root / "mlruns" / "mlflow.db"
    if schema and not db.exists():
        db.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(empty_store_schema(), db)
    return [f"paths.data_dir={root}/data", f"paths.mlruns_dir={root}/mlruns",
            f"paths.output_dir={root}/out", f"hydra.run.dir={root}/out"]


@pytest.fixture
def migrated_store(tmp_path: Path) -> None:
    """The test's store (under ``tmp_path``, as :func:`make_cfg` points it) starts as a copy of
    the migrated empty schema: a tracked run then skips MLflow's migrations (seconds each). For
    tests of runs, not of creating a store or of what a refused run leaves behind."""
    store_overrides(tmp_path, schema=True)


def compose_raw(*overrides: str) -> DictConfig:
    return compose(overrides)


@pytest.fixture
def make_cfg(tmp_path: Path) -> Callable[..., tuple[Config, DictConfig]]:
    """Compose and validate a config whose files all live under ``tmp_path``."""

    def make(*overrides: str) -> tuple[Config, DictConfig]:
        raw = compose_raw(*store_overrides(tmp_path)[:3], *overrides)
        return validate(raw), raw

    return make


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 300,
            env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m pipeline ARGS`` in a real subprocess."""
    return subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=cwd or PROJECT_ROOT,
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (one helper for the project's servers and the tests')."""
    from pipeline.serving.server import free_port as free

    return free()


def answers_health(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    """Poll ``url``/health until the MLflow server (or UI) there answers 200: True; False if
    ``proc`` exits first or ``timeout`` seconds pass."""
    import time
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/health", timeout=2) as r:
                if r.status == 200:
                    return True
        except OSError:
            time.sleep(0.5)
    return False


class MlflowServer:
    """A real ``mlflow server`` process on 127.0.0.1, stoppable and restartable on its port."""

    def __init__(self, root: Path):
        self.root, self.port = root, free_port()
        self.uri = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 90) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        if not (self.root / "server.db").exists():  # the schema copied, not migrated again
            shutil.copyfile(empty_store_schema(), self.root / "server.db")
        mlflow_bin = Path(sys.executable).with_name("mlflow")
        self.proc = subprocess.Popen(
            [str(mlflow_bin), "server", "--host", "127.0.0.1", "--port", str(self.port),
             "--workers", "1", "--backend-store-uri", f"sqlite:///{self.root}/server.db",
             "--artifacts-destination", str(self.root / "artifacts")],
            stdout=subprocess.DEVNULL, stderr=open(self.root / "server.log", "ab"),  # noqa: SIM115
            start_new_session=True)
        if answers_health(self.uri, self.proc, timeout):
            return
        self.stop()
        raise RuntimeError(f"mlflow server did not start: {(self.root / 'server.log').read_text()}")

    def stop(self) -> None:
        from pipeline.serving.server import stop_group

        stop_group(self.proc)
        self.proc = None


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    """One server per test module (start-up takes seconds); tests leave it running."""
    server = MlflowServer(tmp_path_factory.mktemp("mlflow-server"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(autouse=True, scope="session")
def no_stray_store():
    """No test leaves an MLflow store at the project root: every store is under ``mlruns/`` or
    a temporary folder (a client falling back to MLflow's relative default ``sqlite:///mlflow.db``
    once left one there, and it got committed)."""
    stray = PROJECT_ROOT / "mlflow.db"
    before = stray.exists()
    yield
    assert before or not stray.exists(), f"a test created {stray}: some MLflow client was "
    "given no tracking URI"


def missing(what: str) -> None:
    """Absent tools fail the test in CI (which installs them) and skip it elsewhere."""
    if os.environ.get("CI"):
        pytest.fail(f"{what} is missing: .ci/run installs it")
    pytest.skip(f"{what} is missing (bash .ci/run installs it)")


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory) -> Iterator[tuple[str, dict[str, str]]]:
    """A Ray head from ``ray start --head --num-cpus=2`` (``--block`` keeps it in one process of
    ours, so stopping it stops only this cluster); its address and the client's environment."""
    if not (Path(sys.executable).parent / "ray").exists():
        missing('Ray (pip install -e ".[ray]")')
    root = tmp_path_factory.mktemp("ray")
    port = free_port()
    auth = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": secrets.token_hex(32)}
    # the workers import this checkout's pipeline, whatever is installed
    env = {**os.environ, **auth, "RAY_USAGE_STATS_ENABLED": "0", "PYTHONPATH": str(PROJECT_ROOT)}
    ray_tmp = tempfile.mkdtemp(prefix="ray", dir="/tmp")  # Ray's socket paths must be short
    log = open(root / "ray.log", "w")  # noqa: SIM115
    head = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", f"--port={port}",
         "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={ray_tmp}"],
        stdout=log, stderr=subprocess.STDOUT, env=env, cwd=PROJECT_ROOT)
    deadline = time.monotonic() + 180
    while "Ray runtime started" not in (root / "ray.log").read_text():
        assert head.poll() is None and time.monotonic() < deadline, \
            (root / "ray.log").read_text()[-3000:]
        time.sleep(1)
    yield f"127.0.0.1:{port}", {**auth, "PYTHONPATH": str(PROJECT_ROOT)}
    head.terminate()
    head.wait(timeout=120)
    log.close()
    shutil.rmtree(ray_tmp, ignore_errors=True)
