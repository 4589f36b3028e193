"""Omniglot few-shot benchmark: the standard figures, through the full pipeline.

Each benchmark is one ``python -m pipeline``-equivalent run of a preset (in-process ``execute``),
so its MLflow run holds every test episode's metrics (step = episode index), the curves and the
model. Prints one Markdown table row per run: mean accuracy over the test episodes with its 95%
CI, meta-training wall time, and episodes/s for meta-training and meta-testing.

    .venv/bin/python -m bench.omniglot protonet_5w1s [more names] \\
        [--root ../shared/data/omniglot] [-- extra Hydra overrides]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import sys
import time

from bench.common import OMNIGLOT_ROOT, machine, raw_config
from pipeline.config import validate
from pipeline.process import stop_on_sigterm
from pipeline.run.runner import execute

#: name -> (preset, published accuracy %)
RUNS = {
    "protonet_5w1s": ("omniglot_5w1s_protonet", 98.8),
    "protonet_5w5s": ("omniglot_5w5s_protonet", 99.7),
    "protonet_20w1s": ("omniglot_20w1s_protonet", 96.0),
    "maml_5w1s": ("omniglot_5w1s_maml", 98.7),
    "maml_20w1s": ("omniglot_20w1s_maml", 95.8),
}


def run(name: str, root: str, extra: list[str]) -> dict:
    preset, published = RUNS[name]
    overrides = [f"experiment={preset}", f"data.root={root}", *extra]
    raw = raw_config(*overrides)
    cfg = validate(raw)
    start, cpu = time.perf_counter(), time.process_time()
    result = execute(cfg, raw, overrides)  # raw: the resolved config is logged as params
    total, cpu = time.perf_counter() - start, time.process_time() - cpu
    acc = result.summaries["test/query_acc_after"]
    t = result.timings
    episodes = t["meta_train_iterations"] * cfg.meta_train.meta_batch_size
    return {
        "name": name, "preset": preset, "run_id": result.run_id, "published": published,
        "acc": 100 * acc.mean, "ci95": 100 * acc.ci95, "test_episodes": acc.n,
        "iterations": t["meta_train_iterations"], "train_episodes": episodes,
        "meta_train_s": t["meta_train_s"], "train_eps_per_s": episodes / t["meta_train_s"],
        "meta_test_s": t["meta_test_s"], "test_eps_per_s": acc.n / t["meta_test_s"],
        "total_s": total, "cpu_s": cpu, "cpu_share": cpu / total, "overrides": overrides,
        # The process's peak resident memory so far (Linux: KiB): one preset per process.
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
    }


def row(r: dict) -> str:
    return (f"| {r['preset']} | {r['acc']:.2f} ± {r['ci95']:.2f} | {r['published']} | "
            f"{r['iterations']} ({r['train_episodes']} episodes) | {r['meta_train_s'] / 60:.1f} | "
            f"{r['train_eps_per_s']:.2f} | {r['meta_test_s']:.0f} | {r['test_eps_per_s']:.1f} | "
            f"{100 * r['cpu_share']:.0f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="+", choices=sorted(RUNS))
    parser.add_argument("--root", default=OMNIGLOT_ROOT,
                        help="folder of the official zips (default: %(default)s)")
    parser.add_argument("--json", help="append each result as a JSON line to this file")
    argv = sys.argv[1:]
    cut = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:cut])
    extra = argv[cut + 1:]  # Hydra overrides, after "--"
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    print(f"machine: {machine()}", flush=True)
    stop_on_sigterm()  # a killed benchmark's run is marked KILLED, not left RUNNING
    for name in args.names:
        r = run(name, args.root, extra)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(r) + "\n")
        print("| preset | acc % (95% CI) | published | meta-train its | train min | "
              "train episodes/s | test s | test episodes/s | CPU share |\n"
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |", flush=True)
        print(row(r), f"\nMLflow run {r['run_id']}; peak memory {r['peak_rss_gib']:.2f} GiB",
              flush=True)


if __name__ == "__main__":
    main()
