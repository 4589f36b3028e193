"""Replaying logged runs: ``pipeline.rerun`` (rerun and compare) and ``pipeline.resume``
(continue a KILLED run), on what a run logged (:mod:`~pipeline.replay.logged.logged`)."""
