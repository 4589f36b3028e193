"""Latency of the few-shot model through ``mlflow models serve`` (``few_shot/``, pipeline.serving).

For each case a short run is made (the latency of adaptation does not depend on how long the
model was meta-trained), its ``few_shot/`` model is served by ``mlflow models serve
--env-manager local`` in a process that cannot import the project, and a real HTTP client
(``http.client``, one keep-alive connection per client thread) sends it one test task per
request, in each of the request forms ``--bodies`` names:

* ``inputs``: ``{"inputs": {"support_x": [[...]], ...}}``, pixels as JSON numbers (MLflow's
  scoring server deep-copies this form's nested lists before the model sees them);
* ``instances``: ``{"instances": [task]}``, the same numbers in MLflow's row form (one row: one
  task), which the server turns into arrays without that copy;
* ``files`` (image cases): real image files, base64 PNG, in the row form: Omniglot's own
  105x105 drawings from ``images_evaluation.zip`` (a task's ``N`` characters, ``K`` + ``Q``
  drawings each), decoded and resized by the served model.

For each form:

* the first request's time (for the first form: it traces the adaptation for that input
  shape; later forms reuse it);
* ``--warmup`` requests, then ``--requests`` requests from 1 client thread: p50 and p99;
* ``--requests`` requests from 2 client threads: requests per second.

Cases (goals from the issue): ``synthetic`` (the default synthetic MAML: p50 <= 20 ms),
``omniglot_maml`` (``omniglot_5w1s_maml``, 5-way 1-shot, 10 inner steps, 75 queries: p50 <= 150
ms), ``omniglot_protonet`` (ProtoNets on the same task: p50 <= 40 ms).

    python -m bench.serving [--cases synthetic omniglot_maml omniglot_protonet]
        [--bodies inputs instances files] [--requests 200] [--warmup 20] [--iterations 20]
        [--root ../shared/data/omniglot] [--tf-threads 1]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import tempfile
import threading
import time
import zipfile
from pathlib import Path

import numpy as np

from bench.common import OMNIGLOT_ROOT, machine, raw_config
from pipeline.config import validate
from pipeline.run.runner import execute
from pipeline.serving.server import ModelServer
from pipeline.tracking import few_shot

#: The request forms (see the module's docstring).
BODIES = ("inputs", "instances", "files")
#: case -> (overrides, inner steps to ask for (None: the run's), goal p50 ms)
CASES = {
    "synthetic": ([], None, 20.0),
    "omniglot_maml": (["experiment=omniglot_5w1s_maml"], 10, 150.0),
    "omniglot_protonet": (["experiment=omniglot_5w1s_protonet"], None, 40.0),
}


def make_run(case: str, root: Path, iterations: int, omniglot: str) -> tuple[str, dict]:
    """A short run of the case; (tracking URI, its run id, query rows and request bodies per
    form, one per test task)."""
    overrides, steps, _ = CASES[case]
    extra = [f"data.root={omniglot}", "data.num_test_tasks=20",
             "meta_train.log_every=10"] if case.startswith("omniglot") else []
    raw = raw_config(*overrides, *extra, f"meta_train.iterations={iterations}",
                     f"paths.data_dir={root}/data", f"paths.mlruns_dir={root}/mlruns",
                     f"paths.output_dir={root}/out/{case}", "meta_test.compare_to_scratch=false")
    cfg = validate(raw)
    result = execute(cfg, raw, overrides)
    test = result.tasks.test
    tasks = []
    for i in range(test.num_tasks):
        task = test.take(slice(i, i + 1))
        tasks.append({"support_x": task.support_x[0].tolist(),
                      "support_y": task.support_y[0].tolist(),
                      "query_x": task.query_x[0].tolist()})
    first = test.take(slice(0, 1))
    shape = (result.tasks.num_outputs, first.support_x.shape[1], first.query_x.shape[1])
    bodies = {"inputs": [{"inputs": t} for t in tasks],
              "instances": [{"instances": [t]} for t in tasks]}
    if case.startswith("omniglot"):
        bodies["files"] = [{"instances": [t]} for t in omniglot_files(omniglot, len(tasks),
                                                                       *shape)]
    for form in bodies.values():
        for body in form:
            if steps is not None:
                (body.get("inputs") or body["instances"][0])["steps"] = steps
    return cfg.tracking.uri, {"run_id": result.run_id, "queries": shape[2],
                              "bodies": {k: [json.dumps(b).encode() for b in v]
                                         for k, v in bodies.items()}}


def omniglot_files(root: str, tasks: int, ways: int, support: int, query: int) -> list[dict]:
    """``tasks`` tasks of real Omniglot drawings (the evaluation zip's 105x105 PNG files,
    base64): each ``ways`` characters, the first ``support / ways`` drawings of each labelled,
    the next ``query / ways`` to predict."""
    shots, queries = support // ways, query // ways
    with zipfile.ZipFile(Path(root) / "images_evaluation.zip") as z:
        chars: dict[str, list[str]] = {}
        for member in sorted(z.namelist()):
            if member.endswith(".png"):
                chars.setdefault(member.rsplit("/", 1)[0], []).append(member)
        drawings = list(chars.values())
        out = []
        for t in range(tasks):
            picked = drawings[t * ways:(t + 1) * ways]
            files = [[base64.b64encode(z.read(m)).decode() for m in c[:shots + queries]]
                     for c in picked]
            out.append({"support_x": [f for c in files for f in c[:shots]],
                        "support_y": [y for y in range(ways) for _ in range(shots)],
                        "query_x": [f for c in files for f in c[shots:]]})
    return out


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
    p.add_argument("--bodies", nargs="+", choices=BODIES, default=list(BODIES),
                   help="request forms to measure (files: the image cases only)")
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
            for body in (b for b in args.bodies if b in run["bodies"]):
                figures = measure(server, run["bodies"][body], args.requests, args.warmup)
                goal = CASES[case][2]
                print(json.dumps({"case": case, "body": body, "queries": run["queries"],
                                  "request_bytes": len(run["bodies"][body][0]),
                                  "tf_threads": args.tf_threads,
                                  "server_start_s": round(started, 1), **figures,
                                  "goal_p50_ms": goal, "met": bool(figures["p50_ms"] <= goal),
                                  "load_average": os.getloadavg()}), flush=True)
        finally:
            server.stop()


if __name__ == "__main__":
    main()
