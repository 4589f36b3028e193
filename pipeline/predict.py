"""``python -m pipeline.predict``: a new task's predictions from files by a run's few-shot model
(:mod:`pipeline.serving.cli`)."""

from pipeline.serving.cli import cli

if __name__ == "__main__":
    cli()
