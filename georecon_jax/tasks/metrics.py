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
    """Area under the ROC curve (scikit-learn's roc_auc_score: ties count half); NaN when one class
    is absent."""
    from sklearn.metrics import roc_auc_score  # imported on use: scikit-learn takes seconds to load

    y, s = np.asarray(y).ravel() > 0.5, np.asarray(score, np.float64).ravel()
    return float(roc_auc_score(y, s)) if 0 < y.sum() < len(y) else float("nan")


def average_precision(y, score) -> float:
    """Σ_k (R_k − R_{k−1}) P_k over the ranking by score (scikit-learn's average_precision_score);
    NaN without positives."""
    from sklearn.metrics import average_precision_score

    y, s = np.asarray(y).ravel() > 0.5, np.asarray(score, np.float64).ravel()
    return float(average_precision_score(y, s)) if y.any() else float("nan")


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
