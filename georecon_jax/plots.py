"""PNG figures (matplotlib, Agg backend: no display needed): learning curves and parity plots."""

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
