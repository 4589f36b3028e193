"""The cluster backend (``hydra.launcher.backend=ray``): each slot is a long-lived Ray actor,
a warm worker anywhere on the cluster; a job is a call of its ``run`` method, and one
dispatcher thread ``ray.wait``\\ s on the calls in flight and resolves the launcher's futures,
so the launcher's code path (queue, free slots, dead workers) is the loky backend's.

Ray is started (or joined, ``address``) as ``hydra/launcher=ray`` (hydra-ray-launcher) does, from
``hydra.launcher.ray.init`` (:mod:`hydra_plugins.hydra_ray_launcher`'s keys); each actor gets
``hydra.launcher.ray.remote`` (``num_cpus: 1``). Actors are never restarted and their calls
never retried (``max_restarts=0``, ``max_task_retries=0``): a job runs once, and a dead actor
(``ray.kill``, SIGKILL, Ray's memory monitor, a lost node) fails only its job, then a fresh
actor takes its slot. Actors are not detached: Ray kills them when the launching process (the
driver) exits, however it ends, so no watchdog runs in them (the loky backend's watches a parent
pid, which means nothing on another node). A stop reaches a busy actor as SIGTERM, sent by a
zero-CPU task on the actor's node.
"""

import contextlib
import logging
import os
import re
import signal
import threading
import time
from concurrent.futures import Future
from typing import Any

import ray
from ray import exceptions as rx
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from hydra_plugins.pipeline_launcher import _worker as worker
from hydra_plugins.pipeline_launcher._core import Job, Slot

log = logging.getLogger(__name__)

#: How long the dispatcher's ``ray.wait`` blocks before it looks for new calls or a close.
WAIT_S = 0.2


class RayWorker:
    """A slot's worker process, as a Ray actor: set up once, then job after job."""

    def __init__(self, *init_args: Any) -> None:
        worker.init(None, *init_args)  # no watchdog: Ray ends the actor with its driver

    def ready(self) -> tuple[int, str]:
        return os.getpid(), ray.get_runtime_context().get_node_id()

    def run(self, idx: int, overrides: list[str], config: Any) -> Any:
        return worker.run(idx, overrides, config)


@ray.remote(num_cpus=0, max_retries=0)
def _send_signal(pid: int, signum: int) -> None:
    with contextlib.suppress(OSError):
        os.kill(pid, signum)


class _Dispatcher(threading.Thread):
    """Resolves a :class:`~concurrent.futures.Future` per Ray call in flight, by ``ray.wait``."""

    def __init__(self) -> None:
        super().__init__(daemon=True, name="ray-dispatcher")
        self._calls: dict[Any, Future] = {}
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self._lost: BaseException | None = None  # why Ray went away, if it did

    def add(self, ref: Any) -> Future:
        future: Future = Future()
        with self._lock:
            if self._lost is None:
                self._calls[ref] = future
                return future
        future.set_exception(self._lost)
        return future

    def in_flight(self) -> list[Future]:
        with self._lock:
            return list(self._calls.values())

    def close(self) -> None:
        self._closed.set()

    def run(self) -> None:
        while not self._closed.is_set():
            with self._lock:
                refs = list(self._calls)
            if not refs:
                self._closed.wait(WAIT_S)
                continue
            try:
                ready, _ = ray.wait(refs, num_returns=1, timeout=WAIT_S)
            except Exception as e:  # Ray is gone under us: nothing more will resolve
                with self._lock:
                    lost, self._calls, self._lost = list(self._calls.values()), {}, e
                for future in lost:  # their jobs fail with why, rather than hang the sweep
                    future.set_exception(e)
                return
            for ref in ready:
                with self._lock:
                    future = self._calls.pop(ref)
                try:
                    value = ray.get(ref)
                except BaseException as e:  # the call failed: its future says why
                    future.set_exception(e)
                else:
                    future.set_result(value)


class RayBackend:
    """Start, call, bury and stop Ray actors for :class:`.launcher.PipelineLauncher`."""

    name = "ray"
    #: Whether :meth:`open`'s count is a hard limit on the workers that can run at once.
    cores_limit = True

    def __init__(self, init: dict[str, Any] | None, remote: dict[str, Any] | None) -> None:
        # None means "Ray's default" (and must not be given when joining a cluster)
        self.init = {k: v for k, v in (init or {}).items() if v is not None}
        self.remote = {k: v for k, v in (remote or {}).items() if v is not None}
        self._started_ray = False
        self._dispatcher: _Dispatcher | None = None
        self._actor_class: Any = None
        self._args: list[Any] | None = None

    def open(self) -> int:
        """Start or join Ray; how many workers of ``remote.num_cpus`` the cluster holds."""
        if not ray.is_initialized():
            log.info("Initializing Ray with %s", self.init)
            # ray.init installs a failure handler of its own for SIGTERM (it aborts the
            # process): the sweep's handlers (stop, mark KILLED, resume) are put back.
            handlers = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
            ray.init(**self.init)
            self._started_ray = True
            with contextlib.suppress(ValueError, TypeError):  # not the main thread
                for signum, handler in handlers.items():
                    if handler is not None:
                        signal.signal(signum, handler)
        self._actor_class = ray.remote(RayWorker).options(
            max_restarts=0, max_task_retries=0, **self.remote)
        if self._dispatcher is None or not self._dispatcher.is_alive():
            self._dispatcher = _Dispatcher()
            self._dispatcher.start()
        cpus = ray.cluster_resources().get("CPU", 1)
        return max(1, int(cpus // max(float(self.remote.get("num_cpus", 1)), 1e-9)))

    def start(self, slot: Slot, init_args: tuple) -> None:
        """A fresh actor for ``slot``; it sets up in the background (its pid and node once
        up). The sweep's context is put in Ray's object store once, for every actor."""
        assert self._dispatcher is not None
        if self._args is None:
            self._args = [ray.put(a) for a in init_args]
        slot.worker = self._actor_class.remote(*self._args)
        slot.pid = slot.node = None

        def up(f: Future, s: Slot = slot, handle: Any = slot.worker) -> None:
            if f.exception() is None and s.worker is handle:
                s.pid, s.node = f.result()

        self._dispatcher.add(slot.worker.ready.remote()).add_done_callback(up)

    def submit(self, slot: Slot, job: Job) -> Future:
        assert self._dispatcher is not None
        return self._dispatcher.add(slot.worker.run.remote(job.idx, job.overrides, job.config))

    def death(self, slot: Slot, handle: Any, error: BaseException
              ) -> tuple[str, int | None] | None:
        """Why the actor ``handle`` died under its job (None: ``error`` is no death)."""
        if not isinstance(error, rx.RayActorError | rx.OutOfMemoryError | rx.WorkerCrashedError
                          | rx.NodeDiedError):
            return None
        return death_reason(error), None

    def stop(self, handle: Any, wait: bool = False) -> None:
        with contextlib.suppress(Exception):
            ray.kill(handle, no_restart=True)

    def signal(self, slot: Slot, signum: int) -> None:
        """``signum`` to the actor's process, from a task on its node (perhaps not this one)."""
        if slot.pid and slot.node:
            with contextlib.suppress(Exception):
                _send_signal.options(scheduling_strategy=NodeAffinitySchedulingStrategy(
                    slot.node, soft=False)).remote(slot.pid, signum)

    def close(self, handles: list[Any], wait: bool, grace_s: float = 120.0) -> None:
        """Stop the actors; with ``wait``, after the calls in flight end (at most ``grace_s``:
        stopped jobs mark their runs KILLED first). Ray is shut down if this backend started
        it."""
        if self._dispatcher is not None:
            deadline = time.monotonic() + grace_s
            while wait and self._dispatcher.in_flight() and time.monotonic() < deadline:
                time.sleep(WAIT_S)
            self._dispatcher.close()
        for handle in handles:
            self.stop(handle)
        self._args = None
        if self._started_ray:
            with contextlib.suppress(Exception):
                ray.shutdown()
            self._started_ray = False


def death_reason(error: BaseException) -> str:
    """A dead actor's reason, as recorded in its job's run: Ray's own words, shortened."""
    text = str(error)
    if isinstance(error, rx.OutOfMemoryError) or "NODE_OUT_OF_MEMORY" in text:
        return "worker killed by Ray's memory monitor (out of memory)"
    if isinstance(error, rx.NodeDiedError) or "its node has died" in text:
        return "worker's node died"
    if getattr(error, "actor_init_failed", False):  # its set-up raised (an import, ...)
        last = [line for line in text.splitlines() if line.strip()][-1].strip()
        return f"worker failed to start (Ray: {last[:300]})"
    if "ray.kill" in text:
        return "worker killed by ray.kill"
    detail = re.search(r"Worker exit detail: (.*?)(?: Some common causes|\n|$)", text)
    why = detail.group(1).rstrip(". ") if detail else type(error).__name__
    return f"worker died during the job (Ray: {why}; often: killed by a signal or out of memory)"
