"""Host-side evaluation metrics (numpy, float64): regression and binary-classification scores of
pair tasks, and the QM9 / MD17 test metrics with their units."""

from __future__ import annotations

from typing import Dict, Optional

import numpy as np

from georecon_jax.data.md17 import convert_energy_units

# ------------------------------------------------------------------------- regression, classification


def regression_metrics(y, p) -> Dict[str, float]:
    y, p = np.asarray(y, np.float64).ravel(), np.asarray(p, np.float64).ravel()
    err = p - y
    ss_tot = np.sum((y - y.mean()) ** 2)
    return {
        "rmse": float(np.sqrt(np.mean(err**2))),
        "mae": float(np.mean(np.abs(err))),
        "r2": float(1 - np.sum(err**2) / ss_tot) if ss_tot > 0 else float("nan"),
    }


def roc_auc(y, score) -> float:
    """Mann–Whitney U / (n+ n-), ties counted half."""
    y, s = np.asarray(y).ravel() > 0.5, np.asarray(score, np.float64).ravel()
    n_pos, n_neg = y.sum(), (~y).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    sorted_s = s[order]
    # average ranks over ties
    uniq, start = np.unique(sorted_s, return_index=True)
    ends = np.append(start[1:], len(s))
    for a, b in zip(start, ends):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def average_precision(y, score) -> float:
    """Σ_k (R_k − R_{k−1}) P_k over the ranking by score (as sklearn's average_precision_score)."""
    y, s = np.asarray(y).ravel() > 0.5, np.asarray(score, np.float64).ravel()
    if y.sum() == 0:
        return float("nan")
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]  # end of each group of tied scores
    tp = np.cumsum(ys)[last]
    precision = tp / (last + 1)
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def classification_metrics(y, logit) -> Dict[str, float]:
    y = np.asarray(y).ravel() > 0.5
    pred = np.asarray(logit).ravel() > 0.0
    tp, fp, fn = np.sum(pred & y), np.sum(pred & ~y), np.sum(~pred & y)
    f1 = 2 * tp / max(2 * tp + fp + fn, 1)
    return {
        "roc_auc": roc_auc(y, logit),
        "ap": average_precision(y, logit),
        "f1": float(f1),
        "accuracy": float(np.mean(pred == y)),
    }


# --------------------------------------------------------------------------- QM9 / MD17 properties


def energy_unit_scale(unit: str):
    """(reported unit, factor) for a target unit: eV -> meV; others unchanged."""
    return ("meV", 1000.0) if unit == "eV" else (unit, 1.0)


def property_metrics(
    task: str,
    target: str,
    unit: str,
    predicted,
    reference,
    forces_predicted: Optional[np.ndarray] = None,
    forces_reference: Optional[np.ndarray] = None,
) -> dict:
    """{name: {"value", "unit"}} test metrics of a property task (totals in the target's unit).

    QM9 (``task='qm9'``): ``<target>_mae`` and ``<target>_rmse``, eV targets reported in meV.
    MD17 (any other task): energy and force MAE/RMSE in ``unit`` (and ``unit``/Å), and the MAEs in
    meV and meV/Å.
    """
    err = predicted - reference
    if task == "qm9":
        unit, scale = energy_unit_scale(unit)
        return {
            f"{target}_mae": {"value": float(np.mean(np.abs(err))) * scale, "unit": unit},
            f"{target}_rmse": {"value": float(np.sqrt(np.mean(err**2))) * scale, "unit": unit},
        }
    ferr = forces_predicted - forces_reference
    e_mae, f_mae = float(np.mean(np.abs(err))), float(np.mean(np.abs(ferr)))
    to_ev = lambda x: float(convert_energy_units(x, unit, "eV")) * 1000.0
    return {
        "energy_mae": {"value": e_mae, "unit": unit},
        "force_mae": {"value": f_mae, "unit": f"{unit}/Å"},
        "energy_rmse": {"value": float(np.sqrt(np.mean(err**2))), "unit": unit},
        "force_rmse": {"value": float(np.sqrt(np.mean(ferr**2))), "unit": f"{unit}/Å"},
        "energy_mae_meV": {"value": to_ev(e_mae), "unit": "meV"},
        "force_mae_meV": {"value": to_ev(f_mae), "unit": "meV/Å"},
    }
