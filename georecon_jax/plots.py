"""PNG figures (matplotlib, Agg backend: no display needed): learning curves, parity plots,
GeoRecon's z diagnostic, and the studies' panels of lines (`line_panels`) and of bars with a dot per
seed (`seed_bars`)."""

from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

import numpy as np


# the first 10: matplotlib's default cycle; beyond it the dark half of tab20b, so that an 11th arm
# does not repeat the 1st (a study with 11 arms drew scratch and the 11th in one blue)
_MORE = ("#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#5254a3", "#8ca252", "#bd9e39")


def color(i: int) -> str:
    """The i-th arm's colour, distinct for the first 18."""
    return f"C{i}" if i < 10 else _MORE[(i - 10) % len(_MORE)]


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str, title: str = ""):
    """Writes the figure to ``path`` (PNG, its folder made) and closes it."""
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)


def line_panels(
    path: str,
    panels: Sequence[tuple],
    xlabel: str = "",
    ylabel: str = "",
    xscale: str = "linear",
    yscale: str = "linear",
    hlines: Sequence[tuple] = (),
    size: tuple = (3.6, 3.4),
    sharey: bool = False,
    grid: bool = False,
    legend_each: bool = False,
    title: str = "",
):
    """One panel per ``(panel title, series)`` of ``panels``, side by side.

    Each series is a dict: ``x``, ``y`` and optionally ``fmt`` ('-', 'o', 'o-'), ``color``,
    ``label``, ``ms``, ``lw`` and ``band`` ((low, high), shaded). ``hlines``: (y, color, line style)
    drawn in every panel; ``size``: (width, height) of a panel in inches; the legend goes on the
    last panel (``legend_each``: on every panel).
    """
    plt = _pyplot()
    width, height = size
    fig, axes = plt.subplots(
        1, len(panels), figsize=(width * len(panels) + 1, height), squeeze=False, sharey=sharey
    )
    for ax, (panel, series) in zip(axes[0], panels):
        for s in series:
            ax.plot(
                s["x"],
                s["y"],
                s.get("fmt", "-"),
                color=s.get("color"),
                label=s.get("label"),
                ms=s.get("ms", 3),
                lw=s.get("lw"),
            )
            if s.get("band") is not None:
                ax.fill_between(s["x"], *s["band"], color=s.get("color"), alpha=0.15)
        for y, color, style in hlines:
            ax.axhline(y, color=color, lw=0.8, ls=style)
        ax.set(xscale=xscale, yscale=yscale, xlabel=xlabel)
        ax.set_title(panel, fontsize=9)
        if grid:
            ax.grid(alpha=0.3)
        if legend_each and series:
            ax.legend(fontsize=7)
    axes[0][0].set_ylabel(ylabel, fontsize=8)
    if not legend_each and any(s.get("label") for _, series in panels for s in series):
        axes[0][-1].legend(fontsize=6)
    _save(fig, path, title)


def seed_bars(
    path: str, panels: Sequence[tuple], ylabel: str = "", size: tuple = (3.2, 3.6), rotation: int = 60
):
    """Bars of mean ± std with a dot per seed, one panel per ``(panel title, bars, bottom of the
    y-axis)`` of ``panels``; ``bars``: {bar label: {"mean", "std", "values"}}."""
    plt = _pyplot()
    width, height = size
    fig, axes = plt.subplots(1, len(panels), figsize=(width * len(panels) + 1, height), squeeze=False)
    for ax, (panel, bars, bottom) in zip(axes[0], panels):
        for i, e in enumerate(bars.values()):
            ax.bar(i, e["mean"], yerr=e["std"] if np.isfinite(e["std"]) else 0, color=color(i), capsize=3)
            ax.plot([i] * len(e["values"]), e["values"], "k.", ms=3)
        ax.set_xticks(range(len(bars)))
        ax.set_xticklabels(list(bars), rotation=rotation, ha="right", fontsize=7)
        ax.set_title(panel, fontsize=8)
        ax.set_ylim(bottom=bottom)
    axes[0][0].set_ylabel(ylabel, fontsize=8)
    _save(fig, path)


def learning_curves(rows: Sequence[dict], path: str, panels: Dict[str, tuple], title: str = ""):
    """One panel per entry of ``panels``: {panel title: ((split, key, label), ...)}; log y-axis.

    ``rows`` are metrics.jsonl rows ({"step", "split", key: value}).
    """
    drawn = []
    for panel, series in panels.items():
        lines = []
        for split, key, label in series:
            pts = [
                (r["step"], r[key]) for r in rows if r["split"] == split and key in r and np.isfinite(r[key])
            ]
            if pts:
                s, v = zip(*pts)
                lines.append(dict(x=s, y=v, fmt="-" if split == "train" else "o-", label=label))
        drawn.append((panel, lines))
    line_panels(
        path, drawn, xlabel="step", yscale="log", size=(5, 3.6), grid=True, legend_each=True, title=title
    )


def parity_plot(
    reference, predicted, path: str, label: str, unit: str, mae: Optional[float] = None, title: str = ""
):
    """Scatter of predicted against reference values with the y = x line."""
    plt = _pyplot()
    reference, predicted = np.asarray(reference).ravel(), np.asarray(predicted).ravel()
    fig, ax = plt.subplots(figsize=(4.2, 4.2))
    ax.scatter(reference, predicted, s=4, alpha=0.4, linewidths=0)
    lo = float(min(reference.min(), predicted.min()))
    hi = float(max(reference.max(), predicted.max()))
    ax.plot([lo, hi], [lo, hi], "k--", lw=0.8)
    ax.set_xlabel(f"reference {label} ({unit})")
    ax.set_ylabel(f"predicted {label} ({unit})")
    text = title + (f"\nMAE {mae:.4g} {unit}" if mae is not None else "")
    ax.set_title(text.strip(), fontsize=9)
    _save(fig, path)


def z_diagnostic_plot(diag: Dict, path: str, title: str = ""):
    """GeoRecon's z diagnostic (``summary.json["z_diagnostic"]``): the decoder's ε-MSE by σ with the
    molecule's own, another molecule's and a zero code, the ratios own/other (of ε-MSE and of the
    frame-free distance error of x̂₀) and own/zero, and the RMSD of the
    reconstruction from z alone with the own code against another same-size molecule's code."""
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.8))
    sig = diag.get("sigmas") or []
    ax = axes[0]
    for key, label in (
        ("mse_own", "own code"),
        ("mse_other", "another molecule's code"),
        ("mse_zero", "zero code"),
    ):
        if sig and key in diag:
            ax.plot(sig, diag[key], marker="o", ms=3, label=label)
    ax.set(xscale="log", yscale="log", xlabel="σ (Å)", ylabel="decoder ε-MSE", title="decoder error by code")
    ax = axes[1]
    for key, label in (
        ("own_over_other", "ε-MSE own / other"),
        ("own_over_zero", "ε-MSE own / zero"),
        ("dist_own_over_other", "distance error of x̂₀ own / other"),
        ("spec_own_over_other", "sorted-distance error of x̂₀ own / other"),
    ):
        if sig and key in diag:
            ax.plot(sig, diag[key], marker="o", ms=3, label=label)
    ax.axhline(1.0, color="k", lw=0.8, ls="--")
    ax.set(xscale="log", xlabel="σ (Å)", ylabel="error ratio", title="< 1: the decoder uses z")
    ax = axes[2]
    names = ["own code", "other code\n(same size)", "pure noise"]
    keys = ("recon_rmsd_own", "recon_rmsd_other", "pure_noise_rmsd")
    vals = [np.nan if diag.get(k) is None else diag[k] for k in keys]  # None: not measured
    ax.bar(names, vals, color=["C0", "C1", "0.6"])
    ax.set(
        ylabel="Kabsch RMSD (Å)", title=f"reconstruction from z ({diag.get('n_pairs_same_size', 0)} pairs)"
    )
    for ax in axes[:2]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    axes[2].grid(alpha=0.3, axis="y")
    _save(fig, path, title)
