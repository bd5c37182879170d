"""PNG figures (matplotlib, Agg backend: no display needed): learning curves, parity plots and
GeoRecon's z diagnostic."""

from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def learning_curves(rows: Sequence[dict], path: str, panels: Dict[str, tuple], title: str = ""):
    """One panel per entry of ``panels``: {panel title: ((split, key, label), ...)}; log y-axis.

    ``rows`` are metrics.jsonl rows ({"step", "split", key: value}).
    """
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 3.6), squeeze=False)
    for ax, (panel, series) in zip(axes[0], panels.items()):
        for split, key, label in series:
            pts = [
                (r["step"], r[key]) for r in rows if r["split"] == split and key in r and np.isfinite(r[key])
            ]
            if pts:
                s, v = zip(*pts)
                ax.plot(s, v, marker="o" if split != "train" else None, ms=3, label=label)
        ax.set_xlabel("step")
        ax.set_title(panel)
        ax.set_yscale("log")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


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
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
