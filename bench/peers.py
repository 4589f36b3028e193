"""This pipeline against its peers (learn2learn 0.2.0, plain torch) on the same workloads.

One command times every workload in both frameworks, each measurement in its own subprocess,
alternating (pipeline, peer, pipeline, peer, ...) so that both see the same machine load, at 1
and at 2 threads, and prints ms per meta-iteration with the ratios:

    PYTHONPATH=$PWD .venv/bin/python -m bench.peers               # ~15 min on 2 cores
    PYTHONPATH=$PWD .venv/bin/python -m bench.peers --threads 1 --rounds 1 --only protonet

The peers run in their own environment (``bash scripts/install_peers.sh``, default
``.venv-peers``; ``--peers-python`` points elsewhere). Without it the benchmark says so and
still reports this pipeline's figures.

Workloads (random uint8 images in place of Omniglot's: the time does not depend on the pixels):

* ``sinusoid_maml2``: second-order MAML on the 1-40-40-1 ReLU MLP, meta-batch 25, K=10 support
  and 10 query points, 1 inner SGD step at 0.01, Adam 1e-3 (the MAML paper's setup). Peer: a plain
  torch loop over tasks with ``autograd.grad(create_graph=True)``.
* ``omniglot_maml2`` / ``omniglot_fomaml``: conv4 (64 filters, 3x3 'same' conv, batch norm,
  ReLU, 2x2 max-pool) on 28x28x1, 5-way 1-shot, 5 queries per class, meta-batch 8, 1 inner step
  at 0.4, second / first order, a meta-learned head. Peer: ``l2l.algorithms.MAML`` over
  learn2learn's ``ConvBase(max_pool=True)`` with the same head (a ``clone()`` + ``adapt()`` per
  task). Same network, same maths.
* ``omniglot_maml2_zero_head`` / ``omniglot_fomaml_zero_head``: the same with the pipeline's
  preset setting ``algorithm.zero_head`` (every task's head starts at zero and is not
  meta-learned, which lets the first inner step skip the per-task convolutions); the peer row is
  the same learn2learn step, which gains nothing from a zero head.
* ``omniglot_maml2_stride`` / ``omniglot_fomaml_stride``: the MAML paper's Omniglot net (3x3
  convs with stride 2, no pooling, spatial mean; ``model.downsample=stride``) against
  learn2learn's ``OmniglotCNN``, which is that net.
* ``protonet``: one 20-way 1-shot ProtoNets episode with 5 queries per class, forward and
  backward and an Adam step, conv4 with batch statistics in training and running averages kept
  (the preset's ``model.batch_norm=running``). Peer: plain torch, ``BatchNorm2d`` alike.

Each subprocess warms up (TensorFlow traces and compiles), then times ``--iters`` steps; a
figure is the median over every round's steps.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

PROJECT_ROOT = Path(__file__).resolve().parent.parent
PEERS_PYTHON = PROJECT_ROOT / ".venv-peers" / "bin" / "python"

#: Omniglot MAML setup (bench/README.md, "Conv4 speed"): conv4 on 28x28x1, 5-way 1-shot,
#: 5 queries, meta-batch 8.
_OMNIGLOT = ["experiment=omniglot_5w1s_maml", "data.train_query_per_class=5",
             "meta_train.meta_batch_size=8", "algorithm.inner_steps=1", "algorithm.inner_lr=0.4"]


@dataclass(frozen=True)
class Workload:
    #: Hydra overrides of this pipeline's side.
    overrides: list[str]
    #: The peer's workload in ``bench/peers_torch.py`` (None: no peer).
    peer: str | None
    #: Meta-iterations per compiled call (tiny steps: amortise the call overhead).
    per_call: int = 1
    note: str = ""


def _maml(order: str, head: str, net: str) -> list[str]:
    return [*_OMNIGLOT, f"algorithm.first_order={order == 'first'}",
            f"algorithm.zero_head={head == 'zero'}", f"model.downsample={net}"]


WORKLOADS: dict[str, Workload] = {
    "sinusoid_maml2": Workload(
        ["experiment=sinusoid_maml", "algorithm.inner_steps=1", "algorithm.inner_lr=0.01"],
        "sinusoid_maml2", per_call=100),
    "omniglot_maml2": Workload(_maml("second", "learned", "maxpool"), "l2l_maml2_pool"),
    "omniglot_fomaml": Workload(_maml("first", "learned", "maxpool"), "l2l_fomaml_pool"),
    "omniglot_maml2_zero_head": Workload(_maml("second", "zero", "maxpool"), "l2l_maml2_pool",
                                         note="peer: meta-learned head (same cost)"),
    "omniglot_fomaml_zero_head": Workload(_maml("first", "zero", "maxpool"), "l2l_fomaml_pool",
                                          note="peer: meta-learned head (same cost)"),
    "omniglot_maml2_stride": Workload(_maml("second", "learned", "stride"), "l2l_maml2"),
    "omniglot_fomaml_stride": Workload(_maml("first", "learned", "stride"), "l2l_fomaml"),
    "protonet": Workload(["experiment=omniglot_5w1s_protonet", "data.train_num_classes=20",
                          "data.train_query_per_class=5"], "protonet"),
}


# --- one measurement (a subprocess) ---------------------------------------------------------


def pipeline_worker(name: str, threads: int, iters: int, warmup: int) -> list[float]:
    """ms per meta-iteration of ``name``'s compiled training step in this pipeline, ``iters``
    timed calls after ``warmup`` (the real path: ``Algorithm._chunk_fn`` over a meta-batch)."""
    import numpy as np

    from bench.common import config
    from pipeline.algorithms import Batch, Context, build_algorithm
    from pipeline.algorithms.losses import MSE, SOFTMAX, TaskLoss
    from pipeline.algorithms.optimizers import build_optimizer
    from pipeline.models import build_model
    from pipeline.run import runtime

    w = WORKLOADS[name]
    cfg = config(*w.overrides, f"runtime.intra_op_threads={threads}")
    runtime.setup(cfg.runtime, cfg.seed)
    rng = np.random.default_rng(0)
    k, T = w.per_call, cfg.meta_train.meta_batch_size
    n = getattr(cfg.data, "train_num_classes", None) or getattr(cfg.data, "num_classes", 1)
    if cfg.data.family == "sinusoid":
        shape, units, loss = (1,), 1, TaskLoss(MSE)
        ns = nq = cfg.data.k_shot

        def xs(m):
            return rng.uniform(-5, 5, (k, T, m, 1)).astype(np.float32)

        sx, qx = xs(ns), xs(nq)
        sy, qy = np.sin(sx), np.sin(qx)
    else:
        shape, loss = (28, 28, 1), TaskLoss(SOFTMAX)
        units = n if cfg.algorithm.needs_head else None
        ns, nq = n * cfg.data.k_shot, n * cfg.data.train_query_per_class

        def xs(m):
            return rng.integers(0, 256, (k, T, m, *shape)).astype(np.uint8)

        sx, qx = xs(ns), xs(nq)
        sy = np.broadcast_to(np.tile(np.arange(n), cfg.data.k_shot), (k, T, ns)).astype(np.int32)
        qy = np.broadcast_to(np.repeat(np.arange(n), cfg.data.train_query_per_class),
                             (k, T, nq)).astype(np.int32)
    model = build_model(cfg.model, shape, units, cfg.seed)
    optimizer = build_optimizer(cfg.optimizer, total_steps=10**6)
    algo = build_algorithm(cfg.algorithm, Context(model, loss, optimizer, cfg.seed,
                                                  cfg.meta_train.jit_compile))
    algo.build_for_training(cfg.meta_train)
    chunk = algo._chunk_fn()
    batch = Batch(*(np.ascontiguousarray(a) for a in (sx, sy, qx, qy)))
    for _ in range(warmup):
        chunk(batch)
    times = []
    for _ in range(iters):
        start = time.perf_counter()
        out = chunk(batch)
        next(iter(out.values())).numpy()  # wait for the step
        times.append(1000 * (time.perf_counter() - start) / k)
    return times


def measure(side: str, name: str, threads: int, iters: int, warmup: int,
            peers_python: Path) -> list[float] | str:
    """Times from a fresh subprocess, or the reason there are none."""
    w = WORKLOADS[name]
    if side == "pipeline":
        cmd = [sys.executable, "-m", "bench.peers", "--worker", name]
    else:
        cmd = [str(peers_python), str(PROJECT_ROOT / "bench" / "peers_torch.py"),
               "--workload", w.peer]
    cmd += ["--threads", str(threads), "--iters", str(iters), "--warmup", str(warmup)]
    env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT), "OMP_NUM_THREADS": str(threads)}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=PROJECT_ROOT)
    lines = [ln for ln in done.stdout.splitlines() if ln.startswith("{")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ["no output"])[-1]
        return f"{side} {name} failed (exit {done.returncode}): {tail}"
    return json.loads(lines[-1])["ms"]


def peers_available(peers_python: Path) -> str | None:
    """None if the peers' environment imports torch and learn2learn, else why not."""
    if not peers_python.exists():
        return (f"no peers environment at {peers_python} (make it with "
                f"`bash scripts/install_peers.sh`, or pass --peers-python)")
    done = subprocess.run([str(peers_python), str(PROJECT_ROOT / "bench" / "peers_torch.py"),
                           "--check"], capture_output=True, text=True)
    if done.returncode != 0:
        return f"the peers environment {peers_python} does not work: " + (
            done.stderr.strip().splitlines() or ["?"])[-1]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--rounds", type=int, default=2,
                        help="alternating subprocess pairs per workload and thread count")
    parser.add_argument("--iters", type=int, default=10, help="timed steps per subprocess")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--only", nargs="+", choices=sorted(WORKLOADS), default=list(WORKLOADS))
    parser.add_argument("--peers-python", type=Path, default=PEERS_PYTHON)
    parser.add_argument("--json", help="write every measurement to this file")
    parser.add_argument("--worker", choices=sorted(WORKLOADS), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one pipeline measurement, as a subprocess of the run below
        ms = pipeline_worker(args.worker, args.threads[0], args.iters, args.warmup)
        print(json.dumps({"ms": ms}))
        return

    from bench.common import machine

    why_not = peers_available(args.peers_python)
    print(f"machine: {machine()}; load {os.getloadavg()[0]:.2f}", flush=True)
    if why_not:
        print(f"PEERS NOT RUN: {why_not}. Reporting this pipeline's figures only.", flush=True)
    results: dict[tuple[str, int, str], list[float]] = {}
    for threads in args.threads:
        for name in args.only:
            sides = ["pipeline"] + (["peer"] if WORKLOADS[name].peer and not why_not else [])
            for _ in range(args.rounds):
                for side in sides:
                    out = measure(side, name, threads, args.iters, args.warmup,
                                  args.peers_python)
                    if isinstance(out, str):
                        print(out, flush=True)
                        continue
                    results.setdefault((name, threads, side), []).extend(out)
            print(f"  done: {name} at {threads} thread(s)", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({f"{n}|{t}|{s}": v for (n, t, s), v in
                                               results.items()}, indent=1))
    print(f"load after: {os.getloadavg()[0]:.2f}\n")
    print(table(results, args.only, args.threads))


def table(results: dict, names: list[str], threads: list[int]) -> str:
    def med(key):
        return statistics.median(results[key]) if key in results else None

    rows = ["| workload | threads | pipeline ms/it | peer | peer ms/it | peer / pipeline | "
            "pipeline 1 thread / this |", "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in names:
        w = WORKLOADS[name]
        for t in threads:
            p, q = med((name, t, "pipeline")), med((name, t, "peer"))
            one = med((name, threads[0], "pipeline"))
            peer = f"{w.peer}" + (f" ({w.note})" if w.note else "") if w.peer else "-"
            rows.append(f"| {name} | {t} | {_f(p)} | {peer} | {_f(q)} | "
                        f"{_f(q / p if p and q else None, 'x')} | "
                        f"{_f(one / p if p and one else None, 'x')} |")
    return "\n".join(rows)


def _f(v: float | None, unit: str = "") -> str:
    if v is None:
        return "-"
    return f"{v:.2f}{unit}" if v < 10 else f"{v:.0f}{unit}"


if __name__ == "__main__":
    main()
