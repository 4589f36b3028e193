"""Every command of the README and of the docs site, run as written, so a documented command
cannot fail unnoticed.

Each ```bash block is read from README.md, then from every page of ``mkdocs.yml``'s nav in its
order (``docs/notes/`` is not a page), and its commands run in order, in a temporary folder,
with only these changes: the store, data and run folders go to that folder (``paths.*``,
``hydra.*.dir``, ``--tracking-uri``), placeholders (``RUN_ID``, ``PARENT_RUN_ID``, ``GROUP_A``,
``GROUP_B``, ``HEAD``, port 5000, ``...``) become real values, ``[optional]`` parts are
dropped, and runs that do not set ``meta_train.iterations`` train for fewer of them (sweeps
also skip model logging; Optuna runs 2 trials). A command documented twice (the README's loop
is also on its page) runs once, unless its placeholders now stand for other runs.
``mlflow ui`` / ``mlflow server`` are started and must answer ``/health``. The quick start's
default run is run unchanged and must print the README's sample lines. ``sh`` blocks (the team
setup: PostgreSQL, Ray, Slurm; contributor commands) are not run here:
``tests/test_team_setup.py`` runs the team setup's steps, CI the contributor commands.
"""

from __future__ import annotations

import os
import re
import shlex
import signal
import subprocess
from pathlib import Path

import pytest
from mlflow import MlflowClient

from pipeline import PROJECT_ROOT
from pipeline.tracking import keys
from tests.conftest import answers_health, free_port

pytestmark = pytest.mark.slow

README = (PROJECT_ROOT / "README.md").read_text()
BUDGET = "meta_train.iterations=30"


def pages() -> list[Path]:
    """The README, then the docs site's pages in the order of ``mkdocs.yml``'s nav."""
    nav = re.findall(r"^\s*-\s*[^:\n]+:\s*(\S+\.md)\s*$",
                     (PROJECT_ROOT / "mkdocs.yml").read_text(), re.M)
    return [PROJECT_ROOT / "README.md", *(PROJECT_ROOT / "docs" / page for page in nav)]


def blocks() -> list[list[str]]:
    """The commands of each ```bash block (continuations joined, comments dropped)."""
    out = []
    text = "\n".join(page.read_text() for page in pages())
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        commands = []
        for line in block.replace("\\\n", " ").splitlines():
            line = re.sub(r"\s+#.*$", "", line).strip()
            if line and not line.startswith("#"):
                commands.append(line)
        out.append(commands)
    return out


class Session:
    """One temporary project use: a store, servers, the ids commands leave behind."""

    def __init__(self, tmp: Path):
        self.tmp, self.port, self.count = tmp, free_port(), 0
        self.uri = f"sqlite:///{tmp}/mlruns/mlflow.db"
        self.server: subprocess.Popen | None = None

    # --- what the store holds -------------------------------------------------------------

    def _runs(self, role: str | None):
        client = MlflowClient(self.uri)
        exp = client.get_experiment_by_name("meta-learning")
        runs = client.search_runs([exp.experiment_id], order_by=["attributes.start_time ASC"])
        return [r for r in runs if r.info.status == keys.FINISHED
                and r.data.tags.get(keys.SWEEP_ROLE) == role]

    def run_id(self) -> str:
        """The quick start's run (the default config): the README's RUN_ID examples (rerun,
        meta-test its model again) assume a run of the config they are typed with."""
        return self._runs(None)[0].info.run_id

    def parent_id(self) -> str:
        return self._runs(keys.ROLE_PARENT)[-1].info.run_id

    def group_ids(self) -> list[str]:
        """The two seed groups of the latest sweep that has two (a grid over two values; a
        search's re-evaluation groups after it do not count)."""
        groups = self._runs(keys.ROLE_GROUP)
        for parent in reversed(self._runs(keys.ROLE_PARENT)):
            ids = sorted(r.info.run_id for r in groups
                         if r.data.tags.get(keys.PARENT_RUN) == parent.info.run_id)
            if len(ids) == 2:
                return ids
        raise AssertionError("no sweep with two seed groups ran before GROUP_A / GROUP_B")

    # --- one command -----------------------------------------------------------------------

    def identity(self, command: str) -> str:
        """The command with the runs its placeholders stand for now: a command documented
        twice runs again only if these differ."""
        ids = []
        if "GROUP_A" in command:
            ids += self.group_ids()
        if "PARENT_RUN_ID" in command:
            ids.append(self.parent_id())
        if re.search(r"(?<!PARENT_)RUN_ID", command):
            ids.append(self.run_id())
        return " ".join([command, *ids])

    def prepare(self, command: str) -> str:
        self.count += 1
        command = re.sub(r"\s\[[^\]]*\]", "", command)  # optional parts
        command = command.replace("HEAD:", "127.0.0.1:").replace(":5000", f":{self.port}")
        command = command.replace("--port 5000", f"--port {self.port}")
        command = command.replace(".venv/bin/", f"{PROJECT_ROOT}/.venv/bin/")
        command = command.replace("bash scripts/", f"bash {PROJECT_ROOT}/scripts/")
        if "GROUP_A" in command:  # the latest sweep's two seed groups
            a, b = self.group_ids()
            command = command.replace("GROUP_A", a).replace("GROUP_B", b)
        command = command.replace("python scripts/", f"python {PROJECT_ROOT}/scripts/")
        if "PARENT_RUN_ID" in command:  # before RUN_ID, which it contains
            command = command.replace("PARENT_RUN_ID", self.parent_id())
        if "RUN_ID" in command:
            command = command.replace("RUN_ID", self.run_id())
        words = shlex.split(command)
        module = next((w for w in words if w.startswith("pipeline")), "")
        extra: list[str] = []
        if "scripts/run.sh" in command or module == "pipeline":
            if "--cfg" in words or "--info" in words:
                return command
            words = [w for w in words if w != "..."]
            multirun = "-m" in words or "hparams_search=" in command
            if "meta_train.iterations=" not in command and "experiment=notebook" not in command:
                extra.append(BUDGET)
            if multirun:
                extra += ["tracking.log_model=false", f"hydra.sweep.dir={self.tmp}/multirun"
                          f"/{self.count}"]
            if "hparams_search=" in command:
                extra += ["hydra.sweeper.n_trials=2", "hydra.sweeper.reevaluate.top_k=1",
                          "hydra.sweeper.reevaluate.seeds=2"]
            extra += [f"paths.data_dir={self.tmp}/data", f"paths.mlruns_dir={self.tmp}/mlruns",
                      f"hydra.run.dir={self.tmp}/outputs/{self.count}"]
        elif module in ("pipeline.rerun", "pipeline.compare", "pipeline.resume") and \
                "--tracking-uri" not in command:
            extra = ["--tracking-uri", self.uri]
        return shlex.join([*words, *extra])

    def start_server(self, command: str) -> None:
        self.stop_server()
        self.server = subprocess.Popen(["bash", "-c", command], cwd=self.tmp,
                                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                       start_new_session=True)
        if not answers_health(f"http://127.0.0.1:{self.port}", self.server, 120):
            assert self.server.poll() is None, f"{command} exited"
            raise AssertionError(f"{command} did not answer /health")

    def stop_server(self) -> None:
        if self.server is not None and self.server.poll() is None:
            os.killpg(self.server.pid, signal.SIGTERM)
            self.server.wait(timeout=30)
        self.server = None

    def run(self, command: str) -> subprocess.CompletedProcess:
        prepared = self.prepare(command)
        if re.search(r"mlflow (ui|server)\b", prepared):
            self.start_server(prepared)
            return subprocess.CompletedProcess(prepared, 0, "", "")
        out = subprocess.run(["bash", "-c", prepared], cwd=self.tmp, capture_output=True,
                             text=True, timeout=900)
        assert out.returncode == 0, f"{command}\n-> {prepared}\n{out.stderr[-3000:]}"
        return out


def test_every_readme_command_runs(tmp_path):
    session = Session(tmp_path)
    ran, seen = [], set()
    try:
        for commands in blocks():
            for command in commands:
                if command.startswith("bash scripts/test.sh"):
                    continue  # this suite itself
                identity = session.identity(command)
                if identity in seen:
                    continue  # documented twice: the README's loop is also on its page
                seen.add(identity)
                if command == "bash scripts/run.sh":
                    _check_quick_start(session)
                    ran.append(command)
                    continue
                out = session.run(command)
                if "pipeline.rerun" in command:
                    assert "IDENTICAL" in out.stdout, out.stdout
                ran.append(command)
    finally:
        session.stop_server()
    assert len(ran) >= 20, ran


def _check_quick_start(session: Session) -> None:
    """The default run, unchanged but for its folders, prints the README's sample lines."""
    out = session.run("bash scripts/run.sh meta_train.iterations=1000")
    printed = out.stdout + out.stderr
    sample = re.search(r"It ends with\s+```\n(.*?)```", README, re.S).group(1)
    number = r"(\d\.\d{4}) ± (\d\.\d{4})"
    for expected in sample.strip().splitlines():
        head = expected.split(":")[0]
        line = next((ln for ln in printed.splitlines() if head + ":" in ln), None)
        assert line is not None, (head, printed[-2000:])
        got = [float(x) for pair in re.findall(number, line) for x in pair]
        want = [float(x) for pair in re.findall(number, expected) for x in pair]
        assert len(got) == len(want) > 0 and all(abs(g - w) <= 0.002 for g, w in
                                                 zip(got, want, strict=True)), (line, expected)
