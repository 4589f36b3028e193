"""Meta-learning experiment pipeline: generate -> meta-train -> meta-test, tracked in MLflow."""

from pathlib import Path

__version__ = "0.1.0"

#: The repository root (holding ``conf/`` and ``mlruns/``), whatever the working directory.
PROJECT_ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = PROJECT_ROOT / "conf"
