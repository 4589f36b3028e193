"""Checks of the surroundings before a run starts: each failure is one line and exit status 2,
with nothing written to the store, on real folders, a real immutable file and real CLIs."""

from __future__ import annotations

import contextlib
import shutil
import subprocess

import pytest

from pipeline.config import validate
from pipeline.errors import ConfigError, TrackingError
from pipeline.run import preflight
from pipeline.tracking.store import check_writable
from tests.conftest import TINY, compose_raw, run_cli, store_overrides


def _refused(out: subprocess.CompletedProcess, *fragments: str) -> None:
    assert out.returncode == 2, (out.returncode, out.stderr[-2000:])
    assert "Traceback" not in out.stderr, out.stderr[-2000:]
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, lines
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


def test_a_data_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "afile").write_text("x")
    cfg = validate(compose_raw(f"paths.data_dir={tmp_path}/afile/sub", "paths.output_dir=/tmp/x",
                               f"paths.mlruns_dir={tmp_path}/mlruns"))
    with pytest.raises(ConfigError, match=r"paths\.data_dir=.*not a folder"):
        preflight.check(cfg)


def test_folders_that_cannot_be_created_are_refused_before_any_stage(tmp_path):
    """/proc takes no new folders, even for root (whose permission bits always pass)."""
    out = run_cli(*TINY, *store_overrides(tmp_path)[:3], "paths.data_dir=/proc/x", timeout=60)
    _refused(out, "Cannot start", "paths.data_dir='/proc/x'", "no folder can be created")
    assert not (tmp_path / "mlruns").exists()
    out = run_cli(*TINY, *store_overrides(tmp_path)[:3], "hydra.run.dir=/proc/x", timeout=60)
    _refused(out, "hydra.run.dir='/proc/x'")
    out = run_cli("-m", "seed=0,1", *store_overrides(tmp_path)[:3], "hydra.sweep.dir=/proc/x",
                  timeout=60)
    _refused(out, "hydra.sweep.dir='/proc/x'")
    assert not (tmp_path / "mlruns").exists()


@contextlib.contextmanager
def _immutable(path):
    """``chattr +i``: not even root can write the file (what a read-only mount does)."""
    if shutil.which("chattr") is None or subprocess.run(["chattr", "+i", str(path)]).returncode:
        pytest.skip("chattr +i is not available on this file system")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


def test_a_store_that_cannot_be_written_is_refused_in_one_line(tmp_path):
    cfg = validate(compose_raw(*store_overrides(tmp_path)[:3]))
    from pipeline.tracking.store import prepare_store

    prepare_store(cfg.tracking)  # a real store with its schema
    db = tmp_path / "mlruns" / "mlflow.db"
    before = db.read_bytes()
    with _immutable(db):
        with pytest.raises(TrackingError, match="cannot be written"):
            check_writable(cfg.tracking.uri)
        out = run_cli(*TINY, *store_overrides(tmp_path), timeout=60)
    _refused(out, "Cannot start", str(db), "cannot be written")
    assert db.read_bytes() == before
    assert not (tmp_path / "data").exists()


def test_help_lists_options_not_schemas():
    out = run_cli("--help", timeout=60)
    assert out.returncode == 0
    groups = out.stdout.split("== Config ==")[0]
    assert "algorithm: anil, fomaml, maml, metasgd, notebook, protonet, reptile, scratch" in groups
    assert "schema" not in groups
