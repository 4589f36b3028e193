"""Everything MLflow, and the only package that imports it.

* :mod:`~pipeline.tracking.keys` - every tag name, metric scope and artifact path;
* :mod:`~pipeline.tracking.run` - the live run (:class:`Tracker`), outage-proof;
* :mod:`~pipeline.tracking.store` - creating and checking the store, querying stored runs;
* :mod:`~pipeline.tracking.liveness` - heartbeats, and ending runs whose process is gone;
* ``python -m pipeline.tracking import FILE`` - deliver a run's fallback records;
* ``python -m pipeline.tracking reap`` - mark FAILED the RUNNING runs whose heartbeat stopped.

MLflow itself is imported lazily, inside the functions that need it, so importing this package
costs nothing at start-up.
"""

from pipeline.tracking import keys
from pipeline.tracking.run import Tracker, import_fallback
from pipeline.tracking.store import RunRecord

__all__ = ["RunRecord", "Tracker", "import_fallback", "keys"]
