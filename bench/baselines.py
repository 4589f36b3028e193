"""Is meta-learning worth it here? The method beside the scratch, finetune and linear-probe
baselines on the same test episodes, and what the pre-training costs.

``table``: runs each preset with ``meta_test.baselines=[scratch,finetune,linear_probe]`` (the
Omniglot presets keep scratch off, as they do: a conv4 trained from scratch per episode costs
more than the run) and prints method / scratch / finetune / linear_probe query accuracy with
95% CIs over test tasks, each paired gain, and the pre-training's wall time against the
meta-training's (same budget of examples seen). Presets: ``synthetic`` (the default run),
``tabular_maml`` (on ``scripts/make_fake_tabular.py`` tasks), ``omniglot_5w1s_protonet``,
``omniglot_5w1s_maml``.

``sweep``: a 4-job multirun over ``algorithm.inner_lr`` with the pre-trained baselines; counts
the runs whose pre-training was a cache miss (``pretrain_cache`` tag; should be 1) and the
log lines.

    python -m bench.baselines table [--presets synthetic tabular_maml] [--root DIR]
    python -m bench.baselines sweep [--iterations 200] [--launcher basic|joblib]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import OMNIGLOT_ROOT, machine, raw_config
from pipeline import PROJECT_ROOT
from pipeline.config import validate
from pipeline.run.runner import execute
from pipeline.tracking import keys

ALL = "meta_test.baselines=[scratch,finetune,linear_probe]"
PRESETS = {
    "synthetic": [ALL],
    "tabular_maml": ["experiment=tabular_maml", "data.root={root}/set/long.csv"],
    "omniglot_5w1s_protonet": ["experiment=omniglot_5w1s_protonet", f"data.root={OMNIGLOT_ROOT}"],
    "omniglot_5w1s_maml": ["experiment=omniglot_5w1s_maml", f"data.root={OMNIGLOT_ROOT}"],
}


def load_avg() -> str:
    return " ".join(f"{v:.2f}" for v in os.getloadavg())


def run_preset(name: str, root: Path, extra: list[str]) -> dict:
    overrides = [o.format(root=root) for o in PRESETS[name]] + [
        f"paths.data_dir={root}/data", f"paths.mlruns_dir={root}/mlruns",
        f"paths.output_dir={root}/out/{name}", "tracking.log_model=false", *extra]
    if name == "tabular_maml" and not (root / "set" / "long.csv").exists():
        subprocess.run([sys.executable, str(PROJECT_ROOT / "scripts" / "make_fake_tabular.py"),
                        str(root / "set"), "--layouts", "long"], check=True,
                       stdout=subprocess.DEVNULL)
    raw = raw_config(*overrides)
    cfg = validate(raw)
    before, start = load_avg(), time.perf_counter()
    result = execute(cfg, raw, overrides)
    main = "acc" if "test/query_acc_after" in result.summaries else "mse"
    row = {"preset": name, "run_id": result.run_id, "algorithm": cfg.algorithm.name,
           "metric": main, "load_before": before, "load_after": load_avg(),
           "total_s": time.perf_counter() - start,
           "meta_train_s": result.timings.get("meta_train_s")}
    s = result.summaries
    row["method"] = [s[f"test/query_{main}_after"].mean, s[f"test/query_{main}_after"].ci95]
    for b in ("scratch", "finetune", "linear_probe"):
        got = s.get(f"{b}/query_{main}_after")
        row[b] = [got.mean, got.ci95] if got else None
        gain = result.gains.get(b)
        row[f"gain_vs_{b}"] = [gain.mean, gain.ci95] if gain else None
    from mlflow import MlflowClient

    run = MlflowClient(cfg.tracking.uri).get_run(result.run_id)
    row["pretrain_s"] = run.data.metrics.get(keys.TIME_PRETRAIN)
    row["pretrain_examples"] = run.data.metrics.get(keys.PRETRAIN_EXAMPLES)
    row["pretrain_cache"] = run.data.tags.get(keys.PRETRAIN_CACHE)
    row["beats_baselines"] = run.data.tags.get(keys.BEATS_BASELINES)
    return row


def fmt(cell: list[float] | None, pct: bool) -> str:
    if cell is None:
        return "—"
    scale = 100 if pct else 1
    return f"{scale * cell[0]:.2f} ± {scale * cell[1]:.2f}"


def table(rows: list[dict]) -> str:
    lines = ["| preset | method | scratch | finetune | linear_probe | gain over best baseline "
             "| pre-training / meta-training wall |", "| --- " * 7 + "|"]
    for r in rows:
        pct = r["metric"] == "acc"
        gains = {b: r[f"gain_vs_{b}"] for b in ("scratch", "finetune", "linear_probe")
                 if r[f"gain_vs_{b}"]}
        best = min(gains, key=lambda b: gains[b][0]) if gains else None
        lines.append(f"| {r['preset']} ({r['algorithm']}, {r['metric']}{' %' if pct else ''}) "
                     f"| {fmt(r['method'], pct)} | {fmt(r['scratch'], pct)} "
                     f"| {fmt(r['finetune'], pct)} | {fmt(r['linear_probe'], pct)} "
                     f"| {best}: {fmt(gains[best], pct) if best else '—'} "
                     f"| {r['pretrain_s']:.1f} s / {r['meta_train_s']:.1f} s |")
    return "\n".join(lines)


def sweep(args: argparse.Namespace, root: Path) -> dict:
    overrides = ["-m", "algorithm.inner_lr=0.1,0.2,0.3,0.5", ALL,
                 f"meta_train.iterations={args.iterations}", f"paths.data_dir={root}/data",
                 f"paths.mlruns_dir={root}/mlruns", "tracking.log_model=false",
                 f"hydra.sweep.dir={root}/multirun"]
    if args.launcher != "basic":
        overrides.append(f"hydra/launcher={args.launcher}")
    before, start = load_avg(), time.perf_counter()
    out = subprocess.run([sys.executable, "-m", "pipeline", *overrides], capture_output=True,
                         text=True, cwd=PROJECT_ROOT,
                         env={**os.environ, "PYTHONPATH": str(PROJECT_ROOT)})
    wall = time.perf_counter() - start
    text = out.stdout + out.stderr
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root}/mlruns/mlflow.db")
    runs = [r for e in client.search_experiments()
            for r in client.search_runs([e.experiment_id])
            if keys.PRETRAIN_CACHE in r.data.tags]
    return {"returncode": out.returncode, "wall_s": wall, "load_before": before,
            "load_after": load_avg(), "jobs": len(runs),
            "cache": sorted(r.data.tags[keys.PRETRAIN_CACHE] for r in runs),
            "log_cache_miss_lines": text.count("cache miss, pre-training"),
            "log_cache_hit_lines": text.count("pre-trained body: cache hit"),
            "pretrain_s": sorted(r.data.metrics.get(keys.TIME_PRETRAIN) for r in runs),
            "tail": text[-1500:] if out.returncode else ""}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("table")
    t.add_argument("--presets", nargs="+", default=list(PRESETS), choices=list(PRESETS))
    t.add_argument("--root", type=Path, help="data, store and outputs (default: a temp dir)")
    t.add_argument("--override", action="append", default=[], help="extra override, repeated")
    s = sub.add_parser("sweep")
    s.add_argument("--iterations", type=int, default=200)
    s.add_argument("--launcher", default="basic", choices=["basic", "joblib"])
    s.add_argument("--root", type=Path)
    args = p.parse_args()
    root = args.root or Path(tempfile.mkdtemp(prefix="bench-baselines-"))
    print(f"machine: {machine()}; load average {load_avg()}; root {root}", flush=True)
    if args.cmd == "table":
        rows = []
        for name in args.presets:
            rows.append(run_preset(name, root, args.override))
            print(json.dumps(rows[-1]), flush=True)
        print(table(rows))
    else:
        print(json.dumps(sweep(args, root), indent=1))


if __name__ == "__main__":
    main()
