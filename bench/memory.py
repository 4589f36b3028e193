"""Peak resident memory of whole pipeline runs, each in its own process.

    .venv/bin/python -m bench.memory                      # the presets below
    .venv/bin/python -m bench.memory experiment=notebook  # one run with these overrides

Each run goes to a throw-away store; the figure is the child's peak RSS (``ru_maxrss``), which
includes TensorFlow itself (~0.5-0.7 GiB once imported).
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
import time

PRESETS = {
    "notebook": ["experiment=notebook"],
    "synthetic_maml (default)": [],
}


_WRAPPER = (
    "import resource, subprocess, sys; "
    "p = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE); "
    "sys.stderr.write(p.stderr.decode()[-2000:] if p.returncode else ''); "
    "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(p.returncode)"
)


def peak_rss(overrides: list[str]) -> tuple[float, float]:
    """Peak RSS in GiB and wall seconds of ``python -m pipeline OVERRIDES``.

    A fresh wrapper process per run, so ``RUSAGE_CHILDREN`` holds exactly that run.
    """
    with tempfile.TemporaryDirectory() as tmp:
        args = [sys.executable, "-m", "pipeline", *overrides, f"paths.data_dir={tmp}/data",
                f"paths.mlruns_dir={tmp}/mlruns", f"hydra.run.dir={tmp}/out"]
        start = time.perf_counter()
        out = subprocess.run([sys.executable, "-c", _WRAPPER, *args], capture_output=True,
                             text=True)
        if out.returncode:
            raise RuntimeError(f"run failed: {out.stderr}")
        return int(out.stdout.split()[-1]) / 2**20, time.perf_counter() - start


def main() -> None:
    runs = {"command line": sys.argv[1:]} if sys.argv[1:] else PRESETS
    print("| run | peak RSS (GiB) | wall (s) |\n| --- | --- | --- |")
    for name, overrides in runs.items():
        gib, wall = peak_rss(overrides)
        print(f"| {name} | {gib:.2f} | {wall:.0f} |", flush=True)


if __name__ == "__main__":
    main()
