"""Latency of the few-shot model through ``mlflow models serve`` (``few_shot/``, pipeline.serving).

For each case a short run is made (the latency of adaptation does not depend on how long the
model was meta-trained), its ``few_shot/`` model is served by ``mlflow models serve
--env-manager local`` in a process that cannot import the project, and a real HTTP client
(``http.client``, one keep-alive connection per client thread) sends it one test task per
request:

* the first request's time (it traces the adaptation for that input shape);
* ``--warmup`` requests, then ``--requests`` requests from 1 client thread: p50 and p99;
* ``--requests`` requests from 2 client threads: requests per second.

Cases (goals from the issue): ``synthetic`` (the default synthetic MAML: p50 <= 20 ms),
``omniglot_maml`` (``omniglot_5w1s_maml``, 5-way 1-shot, 10 inner steps, 75 queries: p50 <= 150
ms), ``omniglot_protonet`` (ProtoNets on the same task: p50 <= 40 ms).

    python -m bench.serving [--cases synthetic omniglot_maml omniglot_protonet]
        [--requests 200] [--warmup 20] [--iterations 20] [--root ../shared/data/omniglot]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

from bench.common import OMNIGLOT_ROOT, machine, raw_config
from pipeline.config import validate
from pipeline.run.runner import execute
from pipeline.serving.server import ModelServer
from pipeline.tracking import few_shot

#: case -> (overrides, inner steps to ask for (None: the run's), goal p50 ms)
CASES = {
    "synthetic": ([], None, 20.0),
    "omniglot_maml": (["experiment=omniglot_5w1s_maml"], 10, 150.0),
    "omniglot_protonet": (["experiment=omniglot_5w1s_protonet"], None, 40.0),
}


def make_run(case: str, root: Path, iterations: int, omniglot: str) -> tuple[str, dict]:
    """A short run of the case; (tracking URI, a request body per test task)."""
    overrides, steps, _ = CASES[case]
    extra = [f"data.root={omniglot}", "data.num_test_tasks=20",
             "meta_train.log_every=10"] if case.startswith("omniglot") else []
    raw = raw_config(*overrides, *extra, f"meta_train.iterations={iterations}",
                     f"paths.data_dir={root}/data", f"paths.mlruns_dir={root}/mlruns",
                     f"paths.output_dir={root}/out/{case}", "meta_test.compare_to_scratch=false")
    cfg = validate(raw)
    result = execute(cfg, raw, overrides)
    test = result.tasks.test
    bodies = []
    for i in range(test.num_tasks):
        task = test.take(slice(i, i + 1))
        inputs = {"support_x": task.support_x[0].tolist(), "support_y": task.support_y[0].tolist(),
                  "query_x": task.query_x[0].tolist()}
        if steps is not None:
            inputs["steps"] = steps
        bodies.append(json.dumps({"inputs": inputs}).encode())
    return cfg.tracking.uri, {"run_id": result.run_id, "bodies": bodies,
                              "queries": int(test.take(slice(0, 1)).query_x.shape[1])}


class Client:
    """One keep-alive HTTP connection to the server."""

    def __init__(self, port: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=300)

    def post(self, body: bytes) -> float:
        start = time.perf_counter()
        self.conn.request("POST", "/invocations", body, {"Content-Type": "application/json"})
        response = self.conn.getresponse()
        data = response.read()
        took = time.perf_counter() - start
        if response.status != 200:
            raise RuntimeError(f"HTTP {response.status}: {data[:500]!r}")
        return took


def measure(server: ModelServer, bodies: list[bytes], requests: int, warmup: int) -> dict:
    client = Client(server.port)
    first = client.post(bodies[0])
    for i in range(warmup):
        client.post(bodies[i % len(bodies)])
    times = np.array([client.post(bodies[i % len(bodies)]) for i in range(requests)])
    done, lock = [0], threading.Lock()

    def worker(offset: int) -> None:
        c = Client(server.port)
        while True:
            with lock:
                if done[0] >= requests:
                    return
                done[0] += 1
                i = done[0]
            c.post(bodies[(i + offset) % len(bodies)])

    start = time.perf_counter()
    threads = [threading.Thread(target=worker, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    rate = requests / (time.perf_counter() - start)
    return {"first_request_s": round(first, 3),
            "p50_ms": round(float(1e3 * np.percentile(times, 50)), 1),
            "p99_ms": round(float(1e3 * np.percentile(times, 99)), 1),
            "mean_ms": round(float(1e3 * times.mean()), 1),
            "requests_per_s_2_clients": round(rate, 1)}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--iterations", type=int, default=20, help="meta-training iterations of "
                   "each case's run (latency does not depend on them)")
    p.add_argument("--root", default=OMNIGLOT_ROOT, help="the Omniglot zips")
    p.add_argument("--tf-threads", type=int, default=None, help="TensorFlow's intra- and "
                   "inter-op threads in the server (default: TensorFlow's own choice)")
    p.add_argument("--out", type=Path, default=None, help="keep runs and stores here")
    args = p.parse_args(argv)
    root = args.out or Path(tempfile.mkdtemp(prefix="bench-serving-"))
    print(json.dumps({"machine": machine(), "load_average": os.getloadavg()}))
    for case in args.cases:
        uri, run = make_run(case, root, args.iterations, args.root)
        server = ModelServer(few_shot.model_uri(run["run_id"]), uri, root / f"serve-{case}",
                             args.tf_threads)
        started = server.start()
        try:
            figures = measure(server, run["bodies"], args.requests, args.warmup)
        finally:
            server.stop()
        goal = CASES[case][2]
        print(json.dumps({"case": case, "queries": run["queries"], "tf_threads": args.tf_threads,
                          "server_start_s": round(started, 1), **figures, "goal_p50_ms": goal,
                          "met": bool(figures["p50_ms"] <= goal),
                          "load_average": os.getloadavg()}), flush=True)


if __name__ == "__main__":
    main()
