"""``python -m pipeline.rerun``: rerun a logged run and check it gives the same numbers
(:mod:`pipeline.replay.rerun`)."""

from pipeline.replay.rerun import cli

if __name__ == "__main__":
    cli()
