"""Figures logged with each run (matplotlib, headless).

A run's own figures are drawn on plain :class:`~matplotlib.figure.Figure` objects with fixed
margins: no pyplot figure manager and no ``tight_layout`` pass (which lays the text out once
more before the real draw). Every sweep job draws them, so they are on each job's path."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure


def per_task(results: dict[str, np.ndarray], baselines: dict[str, dict[str, np.ndarray]] | None,
             metric: str, algo_name: str) -> Figure:
    """Each test task's query metric before and after adaptation (and every baseline's).

    Tasks with a non-finite value (diverged) are left out and counted in the legend.
    """
    fig = Figure(figsize=(12, 4))
    ax, hist = fig.subplots(1, 2, width_ratios=[3, 1])
    after = results[f"{metric}_after"]
    tasks = np.arange(len(after))
    order = np.argsort(np.where(np.isfinite(after), after, np.inf))
    series = [(f"{algo_name} before adaptation", results[f"{metric}_before"], "tab:gray")
              ] if f"{metric}_before" in results else []
    series.append((f"{algo_name} after adaptation", after, "tab:blue"))
    colors = iter(("tab:orange", "tab:green", "tab:purple", "tab:brown"))
    for name, values in (baselines or {}).items():
        series.append((f"{name} after training", values[f"{metric}_after"], next(colors)))
    for label, values, color in series:
        finite = np.isfinite(values)
        if not finite.all():
            label += f" ({int((~finite).sum())} diverged, not shown)"
        shown = values[order]
        ax.plot(tasks[np.isfinite(shown)], shown[np.isfinite(shown)], ".", ms=3, color=color,
                label=label)
        if finite.any():
            hist.hist(values[finite], bins=20, alpha=0.5, color=color, orientation="horizontal")
            ax.axhline(values[finite].mean(), color=color, lw=1)
    ax.set_xlabel("test task (sorted by post-adaptation value)")
    ax.set_ylabel(f"query {metric}")
    ax.legend(loc="best", fontsize=8)
    hist.set_xlabel("tasks")
    fig.suptitle(f"Per-task query {metric} (lines: means)")
    fig.subplots_adjust(left=0.06, right=0.985, bottom=0.12, top=0.9, wspace=0.12)
    return fig


def curves(curves: dict[str, tuple[list[int], list[float]]]) -> Figure:
    n = max(len(curves), 1)
    fig = Figure(figsize=(5 * n, 3.5))
    axes = fig.subplots(1, n)
    for ax, (name, (steps, values)) in zip(np.atleast_1d(axes), sorted(curves.items()),
                                           strict=False):
        ax.plot(steps, values)
        ax.set_xlabel("meta-iteration")
        ax.set_ylabel(name if "/" in name else f"train/{name}")  # val/...: already scoped
    fig.subplots_adjust(left=0.75 / (5 * n), right=1 - 0.15 / (5 * n), bottom=0.14, top=0.95,
                        wspace=0.3)
    return fig


def regression_fits(fits: dict[str, np.ndarray], algo_name: str) -> Figure:
    """A few test tasks: the true curve, the support points, and the model's curve before and
    after adapting on them (inputs of one feature); a diverged prediction is left out."""
    n = len(fits["query_x"])
    fits = {k: np.where(np.isfinite(v), v, np.nan) for k, v in fits.items()}  # diverged: gaps
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 3.2), squeeze=False)
    for t, ax in enumerate(axes[0]):
        x = fits["query_x"][t, :, 0]
        order = np.argsort(x)
        ax.plot(x[order], fits["query_y"][t][order], color="black", lw=1.5, label="truth")
        ax.plot(x[order], fits["before"][t, order, 0], "--", color="tab:gray", label="before")
        ax.plot(x[order], fits["after"][t, order, 0], color="tab:blue", label="after adaptation")
        ax.plot(fits["support_x"][t, :, 0], fits["support_y"][t], "o", color="tab:red", ms=4,
                label="support")
        ax.set_title(f"test task {t}")
        ax.set_xlabel("x")
    axes[0, 0].legend(loc="best", fontsize=7)
    fig.suptitle(f"{algo_name}: adapted curves on test tasks")
    fig.tight_layout()
    return fig


def close(fig: Figure) -> None:
    plt.close(fig)
