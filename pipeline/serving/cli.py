"""``python -m pipeline.predict MODEL --support FILE --query FILE``: a new task's predictions from
files, by a run's few-shot model (a run id, ``runs:/<id>/few_shot``, ``models:/NAME@champion``
or a downloaded folder).

A tabular run takes raw rows in its training file's columns: the support file with the target
filled, the query file without it (the run's preprocessing is applied). Other runs take a CSV
of feature columns plus a label column (``--label``, default ``label``) for the support set and
the same feature columns for the query set, or ``.npz``/``.npy`` arrays (``support_x`` and
``support_y``; ``query_x``). The predictions (one row per query row: the label, and each
label's probability) are written as CSV. Bad input is refused in one line, exit status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.config import default_tracking_uri
from pipeline.errors import PipelineError
from pipeline.serving import few_shot_predictor as fsp
from pipeline.tracking import few_shot

#: The support file's label column of a non-tabular run, unless ``--label`` names another.
LABEL = "label"


def _table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not a file.")
    frame = pd.read_parquet(path) if path.suffix.lower() == ".parquet" else pd.read_csv(path)
    # Rows named by file and line, so a refusal says where to look.
    frame.index = [f"{path.name}:{i + 2}" for i in range(len(frame))]
    return frame


def _arrays(path: Path, names: tuple[str, ...]) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as f:
        if isinstance(f, np.ndarray):
            return {names[0]: f}
        missing = [n for n in names if n not in f.files]
        if missing:
            raise ValueError(f"{path} holds {f.files}, not {missing[0]!r}: it needs "
                             f"{', '.join(names)}.")
        return {n: f[n] for n in names}


def model_input(spec: fsp.Spec, support: Path, query: Path, label: str | None,
                steps: int | None) -> pd.DataFrame | dict:
    """The request the files make for a model of run ``spec``."""
    if spec.tabular is not None and support.suffix.lower() not in (".npz", ".npy"):
        if steps is not None:
            raise ValueError("--steps goes with array inputs; raw table rows adapt with the "
                             "run's test_inner_steps.")
        s, q = _table(support), _table(query)
        for path, frame, needed in ((support, s, [*spec.tabular.columns, spec.tabular.target]),
                                    (query, q, spec.tabular.columns)):
            absent = [c for c in needed if c not in frame.columns]
            if absent:
                raise ValueError(f"{path} has no column {absent[0]!r}: the run's rows have "
                                 f"{', '.join(needed)}"
                                 f"{' (the target filled)' if path == support else ''}.")
        if spec.tabular.target not in q.columns:
            q[spec.tabular.target] = None
        return pd.concat([s.assign(**{fsp.ROLE: fsp.SUPPORT}),
                          q.assign(**{fsp.ROLE: fsp.QUERY})])
    if support.suffix.lower() in (".npz", ".npy"):
        out = _arrays(support, (fsp.SUPPORT_X, fsp.SUPPORT_Y)) | _arrays(query, (fsp.QUERY_X,))
    else:
        s, q = _table(support), _table(query)
        label = label or LABEL
        if label not in s.columns:
            raise ValueError(f"Support file {support} has no label column {label!r} (its "
                             f"columns: {', '.join(map(str, s.columns))}): name it with --label.")
        if label in q.columns:
            raise ValueError(f"Query file {query} has the label column {label!r}: the query "
                             f"set's labels are what the model predicts; leave it out.")
        features = [c for c in s.columns if c != label]
        absent = [c for c in features if c not in q.columns]
        if absent:
            raise ValueError(f"Query file {query} lacks the support file's feature column "
                             f"{absent[0]!r}.")
        out = {fsp.SUPPORT_X: s[features].to_numpy(), fsp.SUPPORT_Y: s[label].to_numpy(),
               fsp.QUERY_X: q[features].to_numpy()}
    if steps is not None:
        out[fsp.STEPS] = steps
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m pipeline.predict", description=__doc__.split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="a run id, runs:/<run id>/few_shot, models:/NAME@champion, "
                   "or a local model folder")
    p.add_argument("--support", type=Path, required=True, help="the task's labelled rows")
    p.add_argument("--query", type=Path, required=True, help="the rows to predict")
    p.add_argument("--out", type=Path, default=Path("predictions.csv"),
                   help="where to write the predictions (CSV; default predictions.csv)")
    p.add_argument("--label", help=f"the support file's label column (default {LABEL!r}; a "
                   "tabular run's raw rows use its target)")
    p.add_argument("--steps", type=int, help="inner steps instead of the run's test_inner_steps")
    p.add_argument("--tracking-uri", help="the MLflow store (default: the project's)")
    args = p.parse_args(argv)
    try:
        model = few_shot.load(args.model, args.tracking_uri or default_tracking_uri())
    except Exception as e:
        print(f"Cannot load a few-shot model from {args.model!r}: {str(e).splitlines()[0]}",
              file=sys.stderr)
        return 2
    try:
        request = model_input(few_shot.spec(model), args.support, args.query, args.label,
                              args.steps)
        predictions = few_shot.predict(model, request)
    except (PipelineError, ValueError, OSError) as e:
        print(str(e), file=sys.stderr)
        return 2
    args.out.parent.mkdir(parents=True, exist_ok=True)
    # One task: its rows named by the query file's line (raw rows) or position.
    predictions.drop(columns=fsp.TASK).to_csv(args.out, index_label="row")
    print(f"wrote {len(predictions)} predictions to {args.out}")
    return 0


def cli() -> None:
    sys.exit(main())
