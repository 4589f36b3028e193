"""``python -m pipeline.compare``: list, compare, pair and register runs
(:mod:`pipeline.analysis.compare`)."""

from pipeline.analysis.compare import cli

if __name__ == "__main__":
    cli()
