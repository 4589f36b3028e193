"""``python -m pipeline.resume``: continue a KILLED or FAILED run from its checkpoint
(:mod:`pipeline.replay.resume`)."""

from pipeline.replay.resume import cli

if __name__ == "__main__":
    cli()
