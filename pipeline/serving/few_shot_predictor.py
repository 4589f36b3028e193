"""A logged meta-learner as a fast learner: a new task's labelled support set in, predictions for
its query set out, adapted exactly as the run's meta-test adapts.

This file is copied beside the logged model and imported there by its own name: it imports
TensorFlow, Keras, NumPy and pandas (and Pillow, to decode image files), never the project, so
a logged ``few_shot/`` model loads wherever those are installed. What it needs of the run is in
the state folder written at logging time: the network (stock Keras layers), ``state.json`` (how
the algorithm adapts, with its meta-learned rates and step counts, the task shape, a table's
preprocessing, an image run's file decoding) and, for Meta-SGD, the learned per-parameter rates.

Input: a dict of arrays, ``support_x``, ``support_y`` (the task's own labels, numbers or text),
``query_x`` and optionally ``steps`` (inner steps instead of the run's ``test_inner_steps``); a
batch of tasks is a leading task axis or a list of such dicts. For an image run, ``support_x``
and ``query_x`` may instead hold image files (PNG/JPEG bytes, or base64 text of them), decoded
and resized as the run's family decoded its own files. For a tabular run, also a DataFrame of
raw rows in the training file's columns plus ``role`` (``support``/``query``), the
target filled on support rows. Output: a DataFrame with one row per query row: ``task``,
``prediction`` (a label of the task's own, or the regressed value) and, for classification, one
probability column per label. Bad input raises :class:`InputError` naming what is wrong.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

STATE_FILE, MODEL_FILE, RATES_FILE = "state.json", "model.keras", "rates.npz"
#: How a run adapts: gradient steps on every weight or a masked subset at fixed or learned
#: rates (MAML, FOMAML, ANIL, Meta-SGD), full-batch fine-tuning (Reptile), prototypes
#: (ProtoNets).
SGD, FINETUNE, PROTOTYPES = "sgd", "finetune", "prototypes"
SOFTMAX, SIGMOID, MSE = "softmax", "sigmoid", "mse"
SUPPORT_X, SUPPORT_Y, QUERY_X, STEPS = "support_x", "support_y", "query_x", "steps"
KEYS = (SUPPORT_X, SUPPORT_Y, QUERY_X, STEPS)
#: The raw-row input's column naming each row's part of the task.
ROLE, SUPPORT, QUERY = "role", "support", "query"
TASK, PREDICTION = "task", "prediction"
#: More inner steps than this in one request is a mistake (or a denial of service).
MAX_STEPS = 10_000


class InputError(ValueError):
    """The request cannot be answered as sent; the message says what to change."""


@dataclass(frozen=True)
class Tabular:
    """The run's preprocessing of raw table rows, fitted on its training tasks."""

    target: str
    numeric: list[str]
    categories: dict[str, list[str]]
    medians: list[float]
    mean: list[float]
    std: list[float]
    #: ``train`` (mean/std above), ``support`` (each task's support set's), or ``none``.
    normalize: str
    #: ``refuse`` or ``impute`` (numeric: the medians; a category: all zeros).
    missing: str

    @property
    def columns(self) -> list[str]:
        return [*self.numeric, *self.categories]


@dataclass(frozen=True)
class ImageFiles:
    """How the run's family decoded its image files, so a file sent is decoded the same way."""

    #: Pillow's mode: ``L`` (greyscale, Omniglot) or ``RGB`` (16-bit greyscale scaled to 8 bits).
    mode: str
    #: Omniglot's ink is 255 on a 0 background: 255 minus the greyscale file.
    invert: bool
    #: Lanczos-resized to the run's image size (False: the run kept its files' size).
    resize: bool


@dataclass(frozen=True)
class Spec:
    """What ``state.json`` says about the run."""

    algorithm: str
    adaptation: str
    loss: str
    task_type: str
    #: The model's output width: the run's N-way (classification).
    num_outputs: int
    input_shape: tuple[int, ...]
    steps: int = 0
    inner_lr: float = 0.0
    inner_optimizer: str = "sgd"
    #: Which weights the inner loop moves (None: all).
    mask: list[bool] | None = None
    learned_rates: bool = False
    tabular: Tabular | None = None
    #: An image run's file decoding (None: arrays only).
    image: ImageFiles | None = None
    extra: dict = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Spec:
        data = dict(data)
        tab, image = data.pop("tabular", None), data.pop("image", None)
        data["input_shape"] = tuple(data["input_shape"])
        return cls(**data, tabular=Tabular(**tab) if tab else None,
                   image=ImageFiles(**image) if image else None)

    @property
    def classification(self) -> bool:
        return self.loss != MSE


@dataclass(frozen=True)
class Task:
    """One task's arrays, checked."""

    support_x: np.ndarray
    labels: np.ndarray  # [support] class indices (classification) or values (regression)
    query_x: np.ndarray
    #: The task's own label values, in class-index order (classification).
    classes: np.ndarray | None
    #: The query rows' index in the caller's frame (raw rows), else None.
    index: pd.Index | None = None


class FewShotPredictor:
    """Adapts the run's meta-learned state to each given task and predicts its query set."""

    def __init__(self, model: keras.Model, spec: Spec, rates: list[np.ndarray] | None = None):
        self.model, self.spec = model, spec
        self._params = [tf.convert_to_tensor(v) for v in model.trainable_variables]
        self._state = [tf.convert_to_tensor(v) for v in model.non_trainable_variables]
        self._rates = ([tf.constant(r) for r in rates] if rates is not None
                       else [tf.constant(spec.inner_lr, v.dtype) for v in self._params])
        self._mask = spec.mask or [True] * len(self._params)
        #: The network as plain TensorFlow ops where every layer is one it knows (Keras' own
        #: call of the stock batch-norm twin's per-channel affine is ~50x slower).
        self._plan = _plan(model)
        self._run = tf.function(self._outputs)
        #: (support shape, query shape) -> the adaptation traced for it, called directly by
        #: later requests of that shape (no per-call dispatch on the arguments).
        self._compiled: dict[tuple, Any] = {}

    @classmethod
    def load(cls, folder: str | Path) -> FewShotPredictor:
        folder = Path(folder)
        spec = Spec.from_json(json.loads((folder / STATE_FILE).read_text()))
        model = keras.saving.load_model(folder / MODEL_FILE, compile=False)
        rates = None
        if spec.learned_rates:
            with np.load(folder / RATES_FILE) as f:
                rates = [f[f"rate_{i}"] for i in range(len(f.files))]
        return cls(model, spec, rates)

    # --- the algorithms' own adaptation ---------------------------------------------------

    def _loss(self, out: tf.Tensor, y: tf.Tensor) -> tf.Tensor:
        """Mean loss of one task's outputs, as the run's loss defines it."""
        if self.spec.loss == SOFTMAX:
            per = tf.nn.sparse_softmax_cross_entropy_with_logits(labels=tf.cast(y, tf.int32),
                                                                 logits=out)
        elif self.spec.loss == SIGMOID:
            per = tf.nn.sigmoid_cross_entropy_with_logits(labels=tf.cast(y, out.dtype),
                                                          logits=out[..., 0])
        else:
            diff = out - tf.reshape(tf.cast(y, out.dtype), tf.shape(out))
            per = tf.reduce_mean(tf.square(diff), axis=-1)
        return tf.reduce_mean(per)

    def _call(self, params, x, training: bool):
        if self._plan is not None:
            return _forward(self._plan, list(params), self._state, x, training)
        return self.model.stateless_call(list(params), self._state, x, training=training)[0]

    def _grads(self, params, x, y):
        with tf.GradientTape() as tape:
            tape.watch(params)
            value = self._loss(self._call(params, x, True), y)
        return [tf.convert_to_tensor(g) if g is not None else tf.zeros_like(p)
                for g, p in zip(tape.gradient(value, params), params, strict=True)]

    def _sgd(self, x, y, steps):
        """``steps`` SGD steps (per-parameter rates, masked weights held)."""
        def body(i, params):
            grads = self._grads(params, x, y)
            return i + 1, [p - a * g if m else p for p, g, a, m
                           in zip(params, grads, self._rates, self._mask, strict=True)]

        return tf.while_loop(lambda i, _: i < steps, body, (tf.constant(0), self._params))[1]

    def _finetune(self, x, y, steps):
        """Reptile's test-time update: full-batch SGD or Adam at the inner rate."""
        lr, adam = self.spec.inner_lr, self.spec.inner_optimizer == "adam"
        b1, b2, eps = 0.9, 0.999, 1e-7

        def body(i, params, m, v):
            grads = self._grads(params, x, y)
            if not adam:
                return i + 1, [p - lr * g for p, g in zip(params, grads, strict=True)], m, v
            t = tf.cast(i + 1, params[0].dtype)
            m = [b1 * mi + (1 - b1) * g for mi, g in zip(m, grads, strict=True)]
            v = [b2 * vi + (1 - b2) * g * g for vi, g in zip(v, grads, strict=True)]
            scale = lr * tf.sqrt(1 - b2**t) / (1 - b1**t)
            return i + 1, [p - scale * mi / (tf.sqrt(vi) + eps)
                           for p, mi, vi in zip(params, m, v, strict=True)], m, v

        zeros = [tf.zeros_like(p) for p in self._params]
        return tf.while_loop(lambda i, *_: i < steps, body,
                             (tf.constant(0), self._params, zeros, list(zeros)))[1]

    def _outputs(self, sx, sy, qx, steps, ways):
        """The query set's logits (or values) after adapting to the support set."""
        if self.spec.adaptation == PROTOTYPES:
            s_emb, q_emb = self._call(self._params, sx, False), self._call(self._params, qx, False)
            onehot = tf.one_hot(sy, ways, dtype=s_emb.dtype)
            protos = (tf.einsum("sc,sd->cd", onehot, s_emb)
                      / tf.reduce_sum(onehot, axis=0)[:, None])
            return -tf.reduce_sum(tf.square(q_emb[:, None, :] - protos[None]), axis=-1)
        adapt = self._finetune if self.spec.adaptation == FINETUNE else self._sgd
        return self._call(adapt(sx, sy, steps), qx, False)

    # --- requests -------------------------------------------------------------------------

    def predict(self, model_input: Any) -> pd.DataFrame:
        """Predictions for every task of ``model_input`` (see the module's docstring)."""
        tasks, steps = self.tasks_of(model_input)
        frames = [self.predict_task(t, steps, i) for i, t in enumerate(tasks)]
        return pd.concat(frames) if len(frames) > 1 else frames[0]

    def predict_task(self, task: Task, steps: int | None = None, number: int = 0
                     ) -> pd.DataFrame:
        """One checked task's predictions: ``task`` (``number``), ``prediction`` and,
        classifying, a probability column per label."""
        steps = self.spec.steps if steps is None else steps
        sy = task.labels.astype(np.int32 if self.spec.classification else np.float32)
        ways = len(task.classes) if task.classes is not None else self.spec.num_outputs
        args = (tf.constant(task.support_x), tf.constant(sy), tf.constant(task.query_x),
                tf.constant(steps, tf.int32), tf.constant(ways, tf.int32))
        key = (task.support_x.shape, task.query_x.shape, sy.dtype.str)
        if key not in self._compiled:
            self._compiled[key] = self._run.get_concrete_function(*args)
        out = self._compiled[key](*args).numpy()
        columns: dict[str, Any] = {TASK: np.full(len(out), number)}
        if not self.spec.classification:
            values = out.reshape(len(out), -1)
            columns |= ({PREDICTION: values[:, 0]} if values.shape[1] == 1 else
                        {f"{PREDICTION}_{j}": values[:, j] for j in range(values.shape[1])})
            return pd.DataFrame(columns, index=task.index)
        if self.spec.loss == SIGMOID:
            p1 = 1.0 / (1.0 + np.exp(-out[:, 0].astype(np.float64)))
            probs = np.stack([1.0 - p1, p1], axis=1)
        else:
            logits = out[:, :ways].astype(np.float64)
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            probs = e / e.sum(axis=1, keepdims=True)
        # The label the model ranks first (argmax of its logits, as meta-test scores it).
        best = (out[:, 0] > 0).astype(int) if self.spec.loss == SIGMOID \
            else np.argmax(out[:, :ways], axis=1)
        columns[PREDICTION] = task.classes[best]
        columns |= {_column(label): probs[:, j] for j, label in enumerate(task.classes)}
        return pd.DataFrame(columns, index=task.index)

    # --- checking the input ---------------------------------------------------------------

    def tasks_of(self, model_input: Any) -> tuple[list[Task], int | None]:
        """The checked tasks of a request and its ``steps`` override (None: the run's)."""
        if isinstance(model_input, pd.DataFrame):
            return self._raw_rows(model_input)
        items = list(model_input) if isinstance(model_input, list | tuple) else [model_input]
        if not items or not all(isinstance(i, Mapping) for i in items):
            raise InputError(
                f"Send a dict of arrays ({', '.join(KEYS[:3])}, optional {STEPS}) or a list of "
                f"them{'; or, for this tabular run, a DataFrame of raw rows' if self._tab else ''}"
                f" (got {type(model_input).__name__}).")
        tasks, steps = [], set()
        for item in items:
            one, s = self._arrays(item)
            tasks += one
            steps.add(s)
        if len(steps) > 1:
            raise InputError(f"Tasks of one request ask for different {STEPS}: {sorted(steps)}.")
        return tasks, steps.pop()

    @property
    def _tab(self) -> Tabular | None:
        return self.spec.tabular

    def _steps(self, value: Any) -> int | None:
        if value is None:
            return None
        arr = np.asarray(value)
        if arr.size != 1 or arr.dtype.kind not in "iuf" or float(arr.ravel()[0]) % 1:
            raise InputError(f"{STEPS} must be one whole number of inner steps (got {value!r}).")
        steps = int(arr.ravel()[0])
        if self.spec.adaptation == PROTOTYPES:
            raise InputError(f"{STEPS} was given, but {self.spec.algorithm} adapts by class "
                             f"prototypes and has no inner steps: leave it out.")
        if not 0 <= steps <= MAX_STEPS:
            raise InputError(f"{STEPS}={steps} is out of range: 0 to {MAX_STEPS} inner steps.")
        return steps

    def _arrays(self, item: Mapping[str, Any]) -> tuple[list[Task], int | None]:
        unknown = [k for k in item if k not in KEYS]
        if "query_y" in unknown:
            raise InputError("query_y was sent: the query set's labels are what this model "
                             "predicts. Send support_x, support_y and query_x only.")
        if unknown:
            raise InputError(f"Unknown input {unknown[0]!r}: the inputs are {', '.join(KEYS)} "
                             f"(steps optional).")
        missing = [k for k in KEYS[:3] if k not in item or item[k] is None]
        if missing:
            raise InputError(f"Input {missing[0]!r} is missing: a task needs "
                             f"{', '.join(KEYS[:3])} ({STEPS} optional).")
        steps = self._steps(item.get(STEPS))
        sx, qx = (self._features(item[k], k) for k in (SUPPORT_X, QUERY_X))
        sy = np.asarray(item[SUPPORT_Y])
        rank = len(self.spec.input_shape) + 1
        if sx.ndim != qx.ndim:
            raise InputError(f"support_x has {sx.ndim} axes but query_x {qx.ndim}: both are "
                             f"[rows, {_shape(self.spec.input_shape)}] (or [tasks, rows, ...]).")
        if sx.ndim == rank:
            sx, sy, qx = sx[None], sy[None], qx[None]
        if sy.ndim != 2 or sy.shape[:2] != sx.shape[:2]:
            raise InputError(f"support_y has shape {_shape(sy.shape, True)}, but support_x has "
                             f"{sx.shape[-rank] if sx.ndim > 1 else 0} rows"
                             f"{' per task' if sx.ndim > rank else ''}: one label per support "
                             f"row.")
        return [self._task(sx[i], sy[i], qx[i]) for i in range(len(sx))], steps

    def _features(self, value: Any, name: str) -> np.ndarray:
        arr = self._files(value, name) if _holds_files(value) else np.asarray(value)
        if arr.dtype.kind not in "iufb":
            raise InputError(f"{name} must hold numbers (got {arr.dtype} values such as "
                             f"{arr.ravel()[:1].tolist()}).")
        arr = arr.astype(np.float32)
        shape, rank = self.spec.input_shape, len(self.spec.input_shape)
        if arr.ndim not in (rank + 1, rank + 2) or tuple(arr.shape[-rank:]) != shape:
            what = "features" if rank == 1 else "values"
            raise InputError(
                f"Wrong feature count in {name}: its rows have shape "
                f"{_shape(arr.shape[1:] if arr.ndim > 1 else arr.shape, True)}, but this run's "
                f"model takes rows of {_shape(shape)} {what} ([rows, {_shape(shape)}], or "
                f"[tasks, rows, {_shape(shape)}] for a batch of tasks).")
        if not np.isfinite(arr).all():
            bad = np.argwhere(~np.isfinite(arr))[0]
            raise InputError(f"{name} holds {arr[tuple(bad)]} at index {bad.tolist()}: every "
                             f"feature must be a finite number.")
        if arr.shape[-rank - 1] == 0:
            raise InputError(f"{name} has no rows.")
        return arr

    def _task(self, sx: np.ndarray, sy: np.ndarray, qx: np.ndarray,
              index: pd.Index | None = None) -> Task:
        if not self.spec.classification:
            try:
                values = sy.astype(np.float64)
            except (TypeError, ValueError):
                raise InputError(f"support_y must hold numbers for this regression run (got "
                                 f"{sy[:3].tolist()}).") from None
            if not np.isfinite(values).all():
                raise InputError(f"support_y holds {values[~np.isfinite(values)][0]}: every "
                                 f"target must be a finite number.")
            return Task(sx, values.astype(np.float32), qx, None, index)
        if sy.dtype.kind == "f":
            if not np.isfinite(sy).all():
                raise InputError(f"support_y holds {sy[~np.isfinite(sy)][0]}: every support "
                                 f"row needs its label.")
            if (sy % 1 == 0).all():
                sy = sy.astype(np.int64)
        elif sy.dtype.kind == "O":
            if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in sy):
                raise InputError("support_y has an empty label: every support row needs its "
                                 "label.")
            sy = sy.astype(str)
        classes, labels = np.unique(sy, return_inverse=True)
        ways = 2 if self.spec.loss == SIGMOID else self.spec.num_outputs
        if len(classes) < 2:
            raise InputError(f"The support set has one class ({_column(classes[0])!r}): a "
                             f"classification "
                             f"task needs at least 2 labelled classes.")
        if len(classes) > ways:
            raise InputError(f"The support set has {len(classes)} classes, more than this run's "
                             f"{ways}-way model can tell apart: send at most {ways}.")
        clash = [c for c in classes if _column(c) in (TASK, PREDICTION)]
        if clash:
            raise InputError(f"Label {_column(clash[0])!r} clashes with an output column name: "
                             f"rename it.")
        return Task(sx, labels.astype(np.int64), qx, classes, index)

    # --- image files ---------------------------------------------------------------------------

    def _files(self, value: Any, name: str) -> np.ndarray:
        """Image files (bytes, or base64 text), nested as rows or [tasks, rows], as the run's
        images: uint8 of its input shape."""
        if self.spec.image is None:
            raise InputError(f"{name} holds text or bytes, but this model takes numbers only "
                             f"(rows of {_shape(self.spec.input_shape)}): image files are taken "
                             f"by the few-shot models of image runs.")

        def walk(v: Any, where: str) -> np.ndarray:
            if isinstance(v, str | bytes):
                return decode_image(v, self.spec.image, self.spec.input_shape, where)
            if not isinstance(v, list | tuple | np.ndarray):
                raise InputError(f"{where} is {v!r}, among image files: send every row of "
                                 f"{name} as an image file, or every row as numbers.")
            if not len(v):
                raise InputError(f"{where} is empty: send one image file per row.")
            return np.stack([walk(x, f"{where}[{i}]") for i, x in enumerate(v)])

        return walk(value, name)

    # --- raw table rows -------------------------------------------------------------------

    def _raw_rows(self, frame: pd.DataFrame) -> tuple[list[Task], None]:
        tab = self._tab
        if tab is None:
            raise InputError("A table of rows was sent, but this run's data is not a table: "
                             "send {\"inputs\": {\"support_x\": ..., \"support_y\": ..., "
                             "\"query_x\": ...}}.")
        absent = [c for c in (*tab.columns, tab.target, ROLE) if c not in frame.columns]
        if absent:
            raise InputError(f"Column {absent[0]!r} is missing: raw rows need the training "
                             f"file's feature columns ({', '.join(tab.columns)}), the target "
                             f"{tab.target!r} and {ROLE!r} (support or query).")
        role = frame[ROLE].astype(str).str.strip().str.lower()
        odd = ~role.isin([SUPPORT, QUERY])
        if odd.any():
            raise InputError(f"Row {frame.index[odd.to_numpy()][0]!r}: {ROLE}="
                             f"{frame[ROLE][odd].iloc[0]!r}; each row's {ROLE} is {SUPPORT!r} "
                             f"or {QUERY!r}.")
        support, query = frame[(role == SUPPORT).to_numpy()], frame[(role == QUERY).to_numpy()]
        if support.empty or query.empty:
            raise InputError(f"No {SUPPORT if support.empty else QUERY} rows: a task needs "
                             f"labelled support rows and query rows ({ROLE} column).")
        target = support[tab.target]
        empty = target.isna() | (target.astype(str).str.strip() == "")
        if empty.any():
            raise InputError(f"Support row {support.index[empty.to_numpy()][0]!r} has no label: "
                             f"every support row needs its target {tab.target!r}.")
        labelled = query[tab.target].notna() & (query[tab.target].astype(str).str.strip() != "")
        if labelled.any():
            raise InputError(f"Query row {query.index[labelled.to_numpy()][0]!r} has its target "
                             f"{tab.target!r} set: query rows leave it empty (it is what this "
                             f"model predicts).")
        sx, qx = self._encode(support), self._encode(query)
        if tab.normalize == "support" and tab.numeric:
            cols = len(tab.numeric)
            mu = sx[:, :cols].mean(axis=0, keepdims=True)
            sd = sx[:, :cols].std(axis=0, keepdims=True)
            sd = np.where(sd > 1e-6, sd, 1.0).astype(sx.dtype)
            sx[:, :cols], qx[:, :cols] = (sx[:, :cols] - mu) / sd, (qx[:, :cols] - mu) / sd
        y = target.to_numpy()
        if self.spec.classification:
            numbers = pd.to_numeric(target.astype(str).str.strip(), errors="coerce")
            y = numbers.to_numpy() if numbers.notna().all() else \
                target.astype(str).str.strip().to_numpy()
        return [self._task(sx, np.asarray(y), qx, query.index)], None

    def _encode(self, rows: pd.DataFrame) -> np.ndarray:
        """Rows as the run's features: numeric (imputed, standardised) then one-hot blocks."""
        tab = self._tab
        numeric = np.empty((len(rows), len(tab.numeric)))
        for j, col in enumerate(tab.numeric):
            values = rows[col]
            if values.dtype.kind not in "iufb":
                parsed = pd.to_numeric(values, errors="coerce")
                wrong = parsed.isna() & values.notna()
                if wrong.any():
                    raise InputError(f"Column {col!r} is numeric in training, but row "
                                     f"{rows.index[wrong.to_numpy()][0]!r} holds "
                                     f"{values[wrong].iloc[0]!r} ({values.dtype} column).")
                values = parsed
            numeric[:, j] = values.to_numpy(dtype=np.float64, na_value=np.nan)
        holes = np.isnan(numeric)
        if holes.any() and tab.missing != "impute":
            r, c = (int(v[0]) for v in np.nonzero(holes))
            raise InputError(f"Row {rows.index[r]!r}, column {tab.numeric[c]!r}: the value is "
                             f"missing, and this run refused missing values (data.missing="
                             f"{tab.missing}).")
        if np.isinf(numeric).any():
            r, c = (int(v[0]) for v in np.nonzero(np.isinf(numeric)))
            raise InputError(f"Row {rows.index[r]!r}, column {tab.numeric[c]!r}: "
                             f"{numeric[r, c]} is not a finite number.")
        x = (np.where(holes, np.asarray(tab.medians), numeric) - np.asarray(tab.mean)) \
            / np.asarray(tab.std)
        blocks = [x]
        for col, cats in tab.categories.items():
            index = {c: i for i, c in enumerate(cats)}
            onehot = np.zeros((len(rows), len(cats)))
            for r, v in enumerate(rows[col].tolist()):
                if v is None or (isinstance(v, float) and math.isnan(v)):
                    if tab.missing != "impute":
                        raise InputError(f"Row {rows.index[r]!r}, column {col!r}: the category "
                                         f"is missing, and this run refused missing values "
                                         f"(data.missing={tab.missing}).")
                    continue
                i = index.get(str(v).strip(), -1)
                if i >= 0:  # a category the training tasks lack stays all zeros
                    onehot[r, i] = 1.0
            blocks.append(onehot)
        return np.concatenate(blocks, axis=1).astype(np.float32)


# --- image files ---------------------------------------------------------------------------------


def _holds_files(value: Any) -> bool:
    """Whether ``value`` (nested lists or an array) holds text or bytes: image files."""
    while isinstance(value, list | tuple | np.ndarray) and len(value):
        if isinstance(value, np.ndarray):
            return value.dtype.kind in "USO" and _holds_files(value.ravel()[0])
        value = value[0]
    return isinstance(value, str | bytes)


def file_bytes(value: str | bytes, where: str) -> bytes:
    """An image file's bytes: as given, or decoded from base64 text (a ``data:`` URL's prefix
    and line breaks allowed)."""
    if isinstance(value, bytes):
        return value
    text = value.split(",", 1)[1] if value.startswith("data:") else value
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError) as e:
        raise InputError(f"{where} is not base64 ({e}; it starts {value[:20]!r}): send each "
                         f"image file's bytes base64-encoded, e.g. "
                         f"base64.b64encode(open(path, 'rb').read()).decode().") from None


#: Pillow's modes of 16-bit (and 32-bit integer) single-channel images, which ``convert("RGB")``
#: clips to 255 instead of scaling: scaled to 8 bits by 1/257, as the image family does.
_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I")


def decode_image(value: str | bytes, files: ImageFiles, shape: Sequence[int],
                 where: str) -> np.ndarray:
    """One image file as the run's family decoded its own: Pillow's ``L`` (Omniglot, then
    inverted) or RGB, Lanczos-resized to the run's size; uint8 of ``shape`` ([H, W, C])."""
    from PIL import Image

    data = file_bytes(value, where)
    height, width = int(shape[0]), int(shape[1])
    try:
        with Image.open(io.BytesIO(data)) as im:
            if files.mode == "L":
                image = im.convert("L")
            elif im.mode in _WIDE_MODES:
                wide = np.asarray(im).astype(np.float64)
                grey = np.clip(np.rint(wide / 257), 0, 255).astype(np.uint8)
                image = Image.fromarray(np.repeat(grey[..., None], 3, axis=-1), "RGB")
            else:
                image = im.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        raise InputError(f"{where} is not an image file Pillow can read ({type(e).__name__}: "
                         f"{e}): send PNG or JPEG files.") from None
    if image.size != (width, height):
        if not files.resize:
            raise InputError(f"{where} is {image.size[0]}x{image.size[1]}, but this run kept its "
                             f"images' size (data.image_size=null): send {width}x{height} images.")
        image = image.resize((width, height), Image.LANCZOS)
    pixels = np.asarray(image, dtype=np.uint8)
    if files.invert:
        pixels = 255 - pixels
    return pixels.reshape(height, width, -1)


# --- the network as TensorFlow ops -------------------------------------------------------------


def _plan(model: keras.Model) -> list[tuple[str, Any, int, int]] | None:
    """``[(op, layer, trainable weights, non-trainable weights)]`` for a chain of the layers
    the few-shot models use (the conv4 and the MLP), or None (Keras' call is used)."""
    layers = [layer for layer in model.layers if type(layer).__name__ != "InputLayer"]
    if not layers or not (isinstance(model, keras.Sequential) or _chain(model, layers)):
        return None
    out, i = [], 0
    while i < len(layers):
        layer = layers[i]
        kind = type(layer).__name__
        nxt = layers[i + 1] if i + 1 < len(layers) else None
        if kind == "LayerNormalization":
            # The stock twin of batch norm with the batch's statistics: a normalisation over
            # every axis but the channels, then a per-channel scale and shift.
            rank = len(layer.input.shape)
            axes = sorted(int(a) % rank for a in np.atleast_1d(layer.axis))
            if (layer.center or layer.scale or axes != list(range(rank - 1))
                    or type(nxt).__name__ != "EinsumDense" or nxt.equation != "...c,c->...c"
                    or nxt.bias_axes != "c" or nxt.activation is not keras.activations.linear):
                return None
            out.append(("batch_stats_norm", layer, 2, 0))
            i += 2
            continue
        if kind == "Conv2D" and (layer.groups != 1 or tuple(layer.dilation_rate) != (1, 1)
                                 or layer.data_format != "channels_last"):
            return None
        if kind == "BatchNormalization" and (
                not layer.center or not layer.scale
                or layer.axis not in (-1, len(layer.input.shape) - 1)):
            return None
        if kind == "ReLU" and (layer.max_value is not None or layer.negative_slope
                               or layer.threshold):
            return None
        if kind == "MaxPooling2D" and (tuple(layer.pool_size) != tuple(layer.strides)
                                       or layer.data_format != "channels_last"):
            return None
        if kind not in ("Rescaling", "Conv2D", "BatchNormalization", "ReLU", "Activation",
                        "MaxPooling2D", "Flatten", "GlobalAveragePooling2D", "Dense"):
            return None
        out.append((kind, layer, len(layer.trainable_weights), len(layer.non_trainable_weights)))
        i += 1
    if sum(n for _, _, n, _ in out) != len(model.trainable_weights):
        return None
    return out


def _chain(model: keras.Model, layers: list) -> bool:
    """Whether a functional model is its layers applied one after the other."""
    try:
        return (len(model.inputs) == 1 and layers[0].input is model.inputs[0]
                and layers[-1].output is model.outputs[0]
                and all(b.input is a.output for a, b in pairwise(layers)))
    except (AttributeError, ValueError):  # a layer used twice has no single input
        return False


def _forward(plan, params, state, x, training: bool):
    """The network's output on ``x`` with weights ``params`` (and batch-norm averages
    ``state``); batch statistics where training or transductive, as the meta-test."""
    h, p, s = x, 0, 0
    for kind, layer, n, m in plan:
        w, avg = params[p:p + n], state[s:s + m]
        p, s = p + n, s + m
        if kind == "Rescaling":
            h = tf.cast(h, w[0].dtype if w else tf.float32) * layer.scale
            h = h + layer.offset if layer.offset else h
        elif kind == "Conv2D":
            h = tf.nn.conv2d(h, w[0], layer.strides, layer.padding.upper())
            h = layer.activation(h + w[1] if layer.use_bias else h)
        elif kind == "batch_stats_norm":
            axes = list(range(len(h.shape) - 1))
            centred = h - tf.reduce_mean(h, axes, keepdims=True)
            var = tf.reduce_mean(tf.square(centred), axes, keepdims=True)
            h = centred * tf.math.rsqrt(var + layer.epsilon) * w[0] + w[1]
        elif kind == "BatchNormalization":
            if training:
                axes = list(range(len(h.shape) - 1))
                mean = tf.reduce_mean(h, axes, keepdims=True)
                var = tf.reduce_mean(tf.square(h - mean), axes, keepdims=True)
                h = (h - mean) * tf.math.rsqrt(var + layer.epsilon) * w[0] + w[1]
            else:
                h = (h - avg[0]) * (tf.math.rsqrt(avg[1] + layer.epsilon) * w[0]) + w[1]
        elif kind == "ReLU":
            h = tf.nn.relu(h)
        elif kind == "Activation":
            h = layer.activation(h)
        elif kind == "MaxPooling2D":
            h = tf.nn.max_pool2d(h, layer.pool_size, layer.strides, layer.padding.upper())
        elif kind == "Flatten":
            h = tf.reshape(h, [tf.shape(h)[0], -1])
        elif kind == "GlobalAveragePooling2D":
            h = tf.reduce_mean(h, [1, 2])
        else:  # Dense
            h = tf.linalg.matmul(h, w[0])
            h = layer.activation(h + w[1] if layer.use_bias else h)
    return h


def _column(label: Any) -> str:
    return str(label.item() if isinstance(label, np.generic) else label)


def _shape(shape: Sequence[int], brackets: bool = False) -> str:
    text = " x ".join(str(int(s)) for s in shape) or "scalar"
    return f"[{text}]" if brackets else text
