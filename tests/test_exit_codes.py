"""Every command line holds to the exit status table of docs/reliability.md (0 done, 1 failed,
2 refused, 3 rerun differs; 130 Ctrl-C and 143 SIGTERM are held by the interruption tests), with
one line and no traceback when it refuses. Table-driven, on real subprocesses and a real store."""

from __future__ import annotations

import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline import PROJECT_ROOT
from pipeline.analysis import compare
from pipeline.config import TrackingConfig
from pipeline.tracking import keys, store
from tests.conftest import TINY, store_overrides

#: (module, arguments, exit status, a fragment of the output). ``{uri}``, ``{tmp}``, ``{done}``
#: (a FINISHED run), ``{failed}`` (a FAILED one) and ``{missing}`` (no such run) are filled in.
CASES = [
    ("pipeline", ["seed=abc", "{paths}"], 2, "could not be converted to Integer"),
    ("pipeline", ["nosuch=1", "{paths}"], 2, "nosuch"),
    ("pipeline", ["algorithm=mamll", "{paths}"], 2, "mamll"),
    ("pipeline", ["data.k_shot=0", "{paths}"], 2, "Error in config: data.k_shot=0"),
    ("pipeline", ["tracking.experiment_name=" + "e" * 2000, "{paths}"], 2,
     "tracking.experiment_name='eeee"),
    ("pipeline", ["tracking.run_name=" + "r" * 20000, "{paths}"], 2, "MLflow stores at most 250"),
    ("pipeline", ["{paths}", "tracking.uri=sqlite:///{tmp}/garbage.db"], 2,
     "garbage.db (tracking.uri) is not a valid SQLite database"),
    ("pipeline", ["experiment=notebook", "data.k_shot=45", *TINY[:2], "{paths}"], 1,
     "Run failed (marked FAILED in MLflow): data.k_shot=45 is too large"),
    ("pipeline.rerun", ["{missing}", "--tracking-uri", "{uri}"], 2, "Refused: no run with id"),
    ("pipeline.rerun", ["{failed}", "--tracking-uri", "{uri}"], 2, "is FAILED, not FINISHED"),
    ("pipeline.resume", ["{missing}", "--tracking-uri", "{uri}"], 2, "Refused: no run with id"),
    ("pipeline.resume", ["{done}", "--tracking-uri", "{uri}"], 2, "only KILLED or FAILED"),
    ("pipeline.compare", ["--tracking-uri", "{uri}"], 0, "2 runs"),
    ("pipeline.compare", ["--tracking-uri", "{uri}", "--csv", "/proc/x.csv"], 2,
     "Refused: cannot write --csv /proc/x.csv"),
    ("pipeline.compare", ["--tracking-uri", "{uri}", "--paired", "{done}", "{failed}"], 2,
     "is FAILED and has no test tasks"),
    ("pipeline.compare", ["--tracking-uri", "{uri}", "--filter", "nonsense ==="], 2,
     "Cannot search runs"),
    ("pipeline.compare", ["--nosuch"], 2, "unrecognized arguments"),
    ("pipeline.tracking", ["reap", "--tracking-uri", "{uri}"], 0, "0 lost run(s)"),
    ("pipeline.tracking", ["reap", "--older-than", "-1", "--tracking-uri", "{uri}"], 2,
     "--older-than=-1 must be >= 0"),
    ("pipeline.tracking", ["import", "{tmp}/absent.jsonl", "--tracking-uri", "{uri}"], 2,
     "absent.jsonl is not a file"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict[str, str]:
    """A store with a FINISHED run (with test metrics) and a FAILED one, and a garbage file."""
    tmp = tmp_path_factory.mktemp("exit-codes")
    cfg = TrackingConfig(uri=f"sqlite:///{tmp}/mlruns/mlflow.db",
                         artifact_location=str(tmp / "mlruns" / "artifacts"))
    exp = store.prepare_store(cfg)
    client = MlflowClient(cfg.uri)
    fp = {keys.DATA_FINGERPRINT: "f" * 64}
    done = client.create_run(exp, tags=fp).info.run_id
    store.log_values(cfg.uri, done, metrics={"test/query_acc_after_mean": 0.5})
    store.log_series(cfg.uri, done, "task/query_acc_after", [0.5] * 12)
    client.set_terminated(done, "FINISHED")
    failed = client.create_run(exp, tags=fp).info.run_id
    client.set_terminated(failed, "FAILED")
    (tmp / "garbage.db").write_bytes(b"this is not SQLite " * 100)
    return {"uri": cfg.uri, "tmp": str(tmp), "done": done, "failed": failed,
            "missing": uuid.uuid4().hex}


def _fill(args: list[str], world: dict[str, str], tmp: Path) -> list[str]:
    out = []
    for a in args:
        if a == "{paths}":
            out += store_overrides(tmp)
        else:
            out.append(a.format(**world))
    return out


@pytest.mark.slow
@pytest.mark.parametrize(("module", "args", "status", "says"), CASES,
                         ids=[f"{m} {' '.join(a)[:40]}" for m, a, _, _ in CASES])
def test_exit_status(module, args, status, says, world, tmp_path):
    out = subprocess.run([sys.executable, "-m", module, *_fill(args, world, tmp_path)],
                         cwd=PROJECT_ROOT, capture_output=True, text=True, timeout=300)
    text = out.stdout + out.stderr
    assert out.returncode == status, text[-3000:]
    assert says in text, text[-3000:]
    assert "Traceback" not in text
    if status == 2 and module != "pipeline" and not out.stderr.startswith("usage:"):
        # refused: one line (Hydra's own messages and argparse's usage may be longer)
        assert len([line for line in out.stderr.splitlines() if line.strip()]) == 1, out.stderr


def test_compare_refuses_an_unwritable_csv_in_one_line(world, capsys):
    assert compare.main(["--tracking-uri", world["uri"], "--csv", "/proc/x.csv"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Refused: cannot write --csv /proc/x.csv") and err.count("\n") == 1



def test_every_console_command_is_an_installed_entry_point_of_a_real_callable(tmp_path):
    """``[project.scripts]`` is where the commands come from: each is installed as a console
    script (a file next to this interpreter) naming the same function, which exists; the
    ``pipeline`` command finds its configs from any folder."""
    import tomllib
    from importlib.metadata import entry_points

    scripts = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"pipeline", "pipeline-compare", "pipeline-rerun", "pipeline-resume",
            "pipeline-tracking"} <= set(scripts)
    installed = {e.name: e for e in entry_points(group="console_scripts")}
    for name, target in scripts.items():
        assert name in installed and installed[name].value == target, (name, target)
        assert (Path(sys.executable).parent / name).is_file(), name
        assert callable(installed[name].load()), target
    out = subprocess.run([str(Path(sys.executable).parent / "pipeline"), "data.k_shot=0",
                          *store_overrides(tmp_path)], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2 and out.stderr.startswith("Error in config: data.k_shot=0"), \
        out.stderr[-2000:]


def test_one_table_gives_each_ending_its_line_and_status():
    """Refusals are exceptions on their way to one table (:func:`pipeline.process.outcome`)."""
    from pipeline import process
    from pipeline.errors import ConfigError, Refusal, TrackingError
    from pipeline.tracking.run import Undelivered

    bad = ConfigError("data.k_shot=0 must be >= 1")
    assert process.outcome(Refusal(bad)) == ("Error in config: data.k_shot=0 must be >= 1", 2)
    assert process.outcome(Refusal(TrackingError("down"), process.CANNOT_START)) == (
        "Cannot start: down", 2)
    assert process.outcome(bad) == (f"{process.RUN_FAILED}: {bad}", 1)
    assert process.outcome(Undelivered("3 records wait")) == (
        f"{process.NOT_RECORDED}: 3 records wait", 1)
    assert process.outcome(KeyError("x"), "Rerun failed") == ("Rerun failed: KeyError: 'x'", 1)
    line, status = process.outcome(KeyboardInterrupt())
    assert status == 128 + (process.stopped_by or 2) and line.startswith("Interrupted")
