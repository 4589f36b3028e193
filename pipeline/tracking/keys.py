"""The run record's vocabulary, in one place: every tag name, metric scope and artifact path
the pipeline writes or reads. Everything else imports these; nothing spells them out again.

Metric names follow ``<scope>/query_<metric>_<phase>[_<stat>]`` (README, "What MLflow records").
"""

from __future__ import annotations

import re
from collections.abc import Mapping

# --- run statuses (MLflow's) ----------------------------------------------------------------
FINISHED, FAILED, KILLED, RUNNING = "FINISHED", "FAILED", "KILLED", "RUNNING"

# --- tags of every run ------------------------------------------------------------------------
SEED = "seed"
ALGORITHM = "algorithm"
DATA_FAMILY = "data_family"
MODEL = "model"
BATCH_NORM = "batch_norm"
HYDRA_OVERRIDES = "hydra_overrides"
GIT_COMMIT, GIT_DIRTY = "git_commit", "git_dirty"
VERSION_PREFIX = "version/"
DATA_FINGERPRINT, DATA_FILE = "data_fingerprint", "data_file"
#: What a family read from disk did to its sources (``data_prep/<name>``: choices, counts).
DATA_PREP_PREFIX = "data_prep/"
#: ``positive`` / ``none`` / ``n/a``: whether the gain over scratch is above 0 with 95% CI.
NO_GAIN = "meta_learning_gain"
#: Why a run failed or was stopped (plain text, one paragraph: :func:`plain_text`).
ERROR = "error"
#: Liveness of a running job: where it runs, and the UTC time (ISO 8601) its tracker's
#: background thread last wrote, every :data:`HEARTBEAT_S` seconds while the run is open.
HOST, PID, HEARTBEAT = "host", "pid", "heartbeat"
#: The process's start time on its host (clock ticks since boot, from ``/proc``): a pid reused
#: by another process is told apart from the run's own.
PID_START = "pid_start"
HEARTBEAT_S = 5.0
#: A RUNNING run whose heartbeat is older than this is lost (``python -m pipeline.tracking
#: reap``): many beats missed, not one slow write.
REAP_AFTER_S = 120.0
#: How many test tasks diverged (non-finite query metrics), with the inner step where.
DIVERGED = "diverged_tasks"
#: The meta-iteration a checkpoint holds / a resumed run continued from.
CHECKPOINT_ITERATION = "checkpoint_iteration"
RESUMED_AT = "resumed_at_iteration"
RERUN_OF, RERUN_IDENTICAL = "rerun_of", "rerun_identical"
#: Model selection (``meta_train.validate_every``): the meta-iteration whose weights were
#: meta-tested (iterations done when they scored best) and the validation metric that chose it.
SELECTED_ITERATION, SELECTION_METRIC = "selected_iteration", "selection_metric"
#: The independent unit every test CI is over: ``task`` (episodes re-use a few source tasks,
#: as in tables) or ``episode`` (every test episode is a fresh draw).
CI_UNIT = "ci_unit"
UNIT_TASK, UNIT_EPISODE = "task", "episode"
PARENT_RUN = "mlflow.parentRunId"

# --- sweeps -----------------------------------------------------------------------------------
SWEEP_ROLE = "sweep_role"
ROLE_PARENT, ROLE_CHILD, ROLE_GROUP = "parent", "child", "group"
SWEEP_ID, SWEEP_DIR, SWEEP_OVERRIDES, SWEEP_PARAMS = ("sweep_id", "sweep_dir",
                                                      "sweep_overrides", "sweep_params")
SWEEP_JOB = "sweep_job"
SWEEP_LAUNCHER, SWEEP_SWEEPER = "hydra_launcher", "hydra_sweeper"
SWEEP_CHILDREN, SWEEP_CHILDREN_FINISHED = "sweep_children", "sweep_children_finished"
BEST_RUN, BEST_RUN_NAME, BEST_VALUE, BEST_PARAMS = ("best_run_id", "best_run_name",
                                                    "best_value", "best_params")
BEST_IN_SWEEP = "best_in_sweep"
OPTUNA_BEST_VALUE = "optuna_best_value"
#: A group run: the config keys its jobs vary in (``["seed"]``), the sweep job numbers it holds,
#: and a digest of the member runs (and statuses) its statistics were last written from.
GROUP_BY, GROUP_JOBS, GROUP_WRITTEN = "group_by", "group_jobs", "group_written_from"
#: A job run: the group run it belongs to (also its ``mlflow.parentRunId``).
GROUP_RUN = "group_run_id"
#: Resumed sweeps: the job's run this one replaces (a FAILED or unresumable KILLED run), the
#: reverse link on the old run, and on the parent the counts of what a resume found.
REPLACES, REPLACED_BY = "sweep_replaces", "sweep_replaced_by"
RESUMED_SWEEP = "sweep_resumed"
RESUME_COUNTS = ("sweep_resume_skipped", "sweep_resume_resumed", "sweep_resume_rerun",
                 "sweep_resume_new")
#: Searches (``hydra/sweeper=optuna``, :mod:`pipeline.search`): on each trial's run its number,
#: its study and its Optuna state (RUNNING, COMPLETE, PRUNED, FAIL), and for a pruned trial the
#: validation step (meta-iterations done) where its pruner stopped it; on the parent the study
#: and its storage (without password); on a re-evaluation group the trial it re-runs.
TRIAL_NUMBER, STUDY_NAME, TRIAL_STATE = "trial_number", "study_name", "trial_state"
PRUNED_STEP = "pruned_at_step"
STUDY_STORAGE = "optuna_storage"
#: On a search parent: what a trial returns (`best val/query_acc_after_mean`).
SEARCH_OBJECTIVE = "search_objective"
REEVALUATES = "reevaluates_trial"
STATE_PRUNED, STATE_COMPLETE, STATE_FAIL = "PRUNED", "COMPLETE", "FAIL"
#: A pruned trial's run ends FINISHED (MLflow draws FAILED and KILLED alike, a red cross) under
#: its name with this in front, so the runs table tells it from a complete trial at a glance.
PRUNED_NAME_PREFIX = "pruned: "
#: A search parent's record: artifacts under ``search/``, its result (the re-evaluated
#: winner's test score across fresh seeds, with the CI) beside the winner's validation score.
SEARCH_DIR = "search"
SEARCH_TRIALS_TABLE = "search/trials.json"
SEARCH_VAL_BEST = "search/best_trial_val"
SEARCH_TEST_MEAN, SEARCH_TEST_CI95 = "search/reevaluated_test_mean", "search/reevaluated_test_ci95"
SEARCH_OPTIMISM = "search/selection_optimism"
SEARCH_TRIALS = ("search/trials_complete", "search/trials_pruned", "search/trials_failed")
#: Time the workers spent in trials over workers x the trials' wall time
#: (:mod:`pipeline.search.occupancy`; only with a launcher that keeps trials in flight).
SEARCH_WORKER_UTILISATION = "search/worker_utilisation"
#: On each trial's run: the value the search told the study for it (what trials are ranked by).
TRIAL_OBJECTIVE = "search/objective"
#: MLflow's run description (shown in the UI under the run's name) and the run's name.
NOTE, RUN_NAME = "mlflow.note.content", "mlflow.runName"
SEARCH_BEST_TRIAL, SEARCH_BEST_GROUP = "search_best_trial", "search_best_group"
#: Runs of ``pipeline.compare --paired --log`` and ``--register``.
ROLE_PAIRED = "paired_comparison"
PAIRED_A, PAIRED_B, PAIRED_METRIC = "paired_a", "paired_b", "paired_metric"
REGISTERED_FROM = "registered_from_run"

#: Seed-level verdict of a paired comparison of seed groups: each seed's mean paired difference
#: over its units, then across seeds (t-interval, paired t-test = SciPy's ``ttest_rel`` over the
#: per-seed means), a two-level bootstrap CI (seeds, then units within seeds) and rliable's
#: probability of improvement.
PAIRED_SEED_DIFF_MEAN, PAIRED_SEED_DIFF_CI95 = "paired/seed_diff_mean", "paired/seed_diff_ci95"
PAIRED_SEED_T_PVALUE, PAIRED_SEEDS = "paired/seed_t_pvalue", "paired/seeds"
PAIRED_BOOT_LOW, PAIRED_BOOT_HIGH = "paired/bootstrap_ci_low", "paired/bootstrap_ci_high"
PAIRED_PROB_IMPROVEMENT = "paired/prob_improvement"
PAIRED_UNITS = "paired/n_units"

# --- experiments --------------------------------------------------------------------------------
#: MLflow 3 opens an experiment without this tag in its GenAI (traces) view; with it, in the
#: model-training runs table.
EXPERIMENT_KIND, KIND_TRAINING = "mlflow.experimentKind", "custom_model_development"
#: MLflow 3.17's UI picks its GenAI or model-training view UI-wide (a toggle it remembers,
#: GenAI at first) and ignores the tag above; this query string in a link opens model training.
UI_TRAINING_VIEW = "workflowType=machine_learning"

# --- metric scopes ----------------------------------------------------------------------------
TASK = "task/"            # each test task's value (step = task index)
TEST = "test/"            # aggregates over test tasks
SCRATCH_TASK = "scratch_task/"
SCRATCH = "scratch/"
GAIN = "gain/"            # paired gain over scratch
#: The pre-trained baselines (``meta_test.baselines``) besides scratch, each with its scopes
#: ``<name>_task/``, ``<name>/`` and its paired gain ``gain_vs_<name>/``.
FINETUNE, LINEAR_PROBE, SCRATCH_NAME = "finetune", "linear_probe", "scratch"
FINETUNE_TASK, LINEAR_PROBE_TASK = f"{FINETUNE}_task/", f"{LINEAR_PROBE}_task/"
SEEDS = "seeds/"          # a group run's across-seed statistics of its jobs' aggregates
PAIRED = "paired/"        # pipeline.compare --paired --log: per-task differences A - B
TRAIN = "train/"          # meta-training curves (step = meta-iteration)
VAL = "val/"              # scores on the validation tasks (step = meta-iterations done)
TIME = "time/"
#: Metrics compared value by value at every step by reruns (others: by their last value).
PER_STEP_SCOPES = (TASK, SCRATCH_TASK, FINETUNE_TASK, LINEAR_PROBE_TASK, TRAIN, VAL)
#: Metrics that differ between identical runs by nature.
UNREPRODUCIBLE_SCOPES = (TIME,)
#: Phases of a test task's query metrics.
BEFORE, AFTER = "before", "after"
STATS = ("mean", "std", "ci95")
#: How many independent units the test CIs are over, and how many episodes they hold.
CI_UNITS, TEST_EPISODES = "test/ci_units", "test/episodes"
#: Suffixes of a 95% interval that resamples something else than the unit: by class (image
#: families: a cluster bootstrap over the test classes), and a group's two-level bootstrap over
#: seeds, then units within seeds (``seeds/test/query_acc_after_mean_boot_low``).
CLASS_CI_LOW, CLASS_CI_HIGH = "class_ci_low", "class_ci_high"
BOOT_LOW, BOOT_HIGH = "boot_low", "boot_high"


N_SEEDS = "seeds/n_seeds"


def baseline_task(name: str) -> str:
    """A baseline's per-task scope: ``scratch_task/``, ``linear_probe_task/``."""
    return f"{name}_task/"


def baseline(name: str) -> str:
    """A baseline's aggregate scope: ``scratch/``, ``finetune/``."""
    return f"{name}/"


def gain_vs(name: str) -> str:
    """The scope of the method's paired gain over a baseline: ``gain/`` for scratch (its name
    since the first runs), ``gain_vs_finetune/`` and the like for the others."""
    return GAIN if name == SCRATCH_NAME else f"gain_vs_{name}/"


def seeds(metric: str, stat: str) -> str:
    """A group's across-seed statistic of a job metric: ``seeds/test/query_acc_after_mean_mean``
    (the mean over seeds of each seed's ``test/query_acc_after_mean``), ``..._ci95``."""
    return f"{SEEDS}{metric}_{stat}"


def steps_phase(steps: int) -> str:
    """The phase after exactly ``steps`` inner steps: ``after_1step``, ``after_10steps``."""
    return f"{AFTER}_{steps}step{'s' if steps != 1 else ''}"


def query(scope: str, metric: str, phase: str = AFTER, stat: str | None = None) -> str:
    """``test/query_acc_after_mean`` and the like."""
    return f"{scope}query_{metric}_{phase}" + (f"_{stat}" if stat else "")


def diverged(scope: str, phase: str = AFTER) -> str:
    """How many test tasks have non-finite query metrics: ``test/diverged_tasks`` (after
    adaptation), ``test/diverged_tasks_before``, ``scratch/diverged_tasks``, ..."""
    return f"{scope}diverged_tasks" + ("" if phase == AFTER else f"_{phase}")


TIME_META_TRAIN, TIME_META_TRAIN_MS, TIME_META_TEST = ("time/meta_train_s",
                                                       "time/meta_train_ms_per_it",
                                                       "time/meta_test_s")
#: Pre-training for the baselines: its wall time when it ran (also when this run found it
#: cached) and the training examples it saw; whether this run found it cached (a tag).
TIME_PRETRAIN, PRETRAIN_EXAMPLES, PRETRAIN_CACHE = ("time/pretrain_s", "pretrain/examples",
                                                    "pretrain_cache")
PRETRAIN_DIR = "pretrained"
#: The baselines whose paired gain's 95% CI lies above 0 (comma-separated; ``none``).
BEATS_BASELINES = "beats_baselines"
#: Seconds of meta-training spent scoring the validation tasks (included in meta_train_s).
TIME_VALIDATION = "time/validation_s"
MEMORY_ESTIMATE = "memory/estimate_gib"  # the run's estimated peak memory (pipeline/memory.py)

# --- artifacts --------------------------------------------------------------------------------
CONFIG_FILE = "config/resolved_config.json"
HYDRA_DIR = "hydra"
CHECKPOINT_DIR = "checkpoint"
MODEL_DIR = "model"
DATA_DIR = "data"
DATA_CONFIG_FILE = "data/generating_config.json"
PLOTS_DIR = "plots"
CURVES_PLOT = "plots/meta_train_curves.png"
REGRESSION_PLOT = "plots/regression_fits.png"
COMPARISON_DIR = "comparison"
COMPARISON_TABLE = "comparison/comparison_table.json"
COMPARISON_PLOT = "comparison/objective_vs_swept.png"
SEEDS_PLOT = "seeds/seeds.png"
SEEDS_TABLE = "seeds/seeds.csv"
PAIRED_TABLE = "paired/per_task_differences.csv"
PAIRED_PLOT = "paired/per_task_differences.png"
#: One row per test episode: its index, source task, classes drawn and every per-episode metric.
EPISODES_TABLE = "results/test_episodes.csv"
#: The tasks (or classes, image families) of each split by name.
SPLITS_FILE = "data/splits.json"
#: In a run's output folder: records a tracking store refused, kept for import.
FALLBACK_FILE = "mlflow_fallback.jsonl"
#: Tag and param values longer than MLflow takes are cut there; the whole value is kept in this
#: artifact folder, one ``<name>.txt`` per value (reruns read ``hydra_overrides`` from it).
FULL_VALUES_DIR = "full_values"


def full_value(name: str) -> str:
    """The artifact holding a cut tag's or param's whole value."""
    return f"{FULL_VALUES_DIR}/{name.replace('/', '_')}.txt"


def per_task_plot(metric: str) -> str:
    return f"{PLOTS_DIR}/per_task_{metric}.png"


# --- params -----------------------------------------------------------------------------------
#: Config values that say where things were written or how this invocation was run, not what
#: was run: they differ between every pair of jobs, so they are logged as tags (same name), not
#: params, and left out of comparisons and of the config-drift check of reruns.
LOCATION_PARAMS = ("paths.", "tracking.uri", "tracking.artifact_location", "tracking.run_name",
                   "tracking.http_", "sweep.resume")


def is_pruned(tags: Mapping[str, str]) -> bool:
    """Whether a run is a search trial its pruner stopped: done on purpose, neither a failure
    nor a complete trial (FINISHED now; KILLED in stores written before)."""
    return tags.get(TRIAL_STATE) == STATE_PRUNED


def is_location(param: str) -> bool:
    return param.startswith(LOCATION_PARAMS)


def split_params(flat: dict[str, object]) -> tuple[dict[str, object], dict[str, object]]:
    """A flattened config as (params, tags): locations become tags (:data:`LOCATION_PARAMS`)."""
    tags = {k: v for k, v in flat.items() if is_location(k)}
    return {k: v for k, v in flat.items() if k not in tags}, tags


#: Terminal escapes: CSI (colours, cursor), OSC (titles, links) and two-character ones.
_ANSI = re.compile(r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|\x1b[@-_]")


def plain_text(text: str) -> str:
    """``text`` as one readable paragraph: no terminal escapes (Keras colours its errors), no
    line breaks or runs of blanks. The ``error`` tag is always this."""
    text = _ANSI.sub("", text)
    return " ".join("".join(c if c.isprintable() else " " for c in text).split())


def params(config: dict, prefix: str = "") -> dict[str, object]:
    """A resolved config as params: dotted names (``data.k_shot``), lists as JSON."""
    import json

    out: dict[str, object] = {}
    for k, v in config.items():
        if isinstance(v, dict):
            out.update(params(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = json.dumps(v) if isinstance(v, list) else v
    return out
