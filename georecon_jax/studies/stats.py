"""Intervals for the studies' comparisons, with the seed as the unit of replication.

Every comparison in a study is paired: arm A and arm B are fine-tuned with the same seed and
tested on the same molecules (or pairs), so the quantity of interest is the per-replicate
difference d_k = metric_A(k) - metric_B(k). Its mean over replicates gets a Student-t interval
with R - 1 degrees of freedom (R replicates). Test molecules are *not* resampled: they are shared
by both arms of a replicate, and their sampling noise is already inside each d_k.

When several replicates share a pretraining run (fine-tuning seed k starts from pretraining seed
k mod P), the d_k of one pretraining are not independent: the interval is then taken over the P
per-pretraining means (``clusters``), with P - 1 degrees of freedom. That is the conservative
choice; ``tests/studies/test_stats.py`` checks by simulation that it holds its level.

A resampling bootstrap over 3 seeds (what the studies did before) is about the min-max of the
three differences and excludes 0 whenever they share a sign: ~25 % of the time with no effect.
"""

from __future__ import annotations

import dataclasses
from typing import Dict, List, Optional, Sequence

import numpy as np
from scipy import stats as _scipy_stats


@dataclasses.dataclass(frozen=True)
class Interval:
    """Mean of the per-replicate differences and its ``level`` t-interval.

    Attributes:
      mean: mean of the units the interval is over (the differences, or the cluster means), in the
        metric's unit.
      low, high: the interval's ends (nan when fewer than 2 units of replication).
      per_replicate: the differences d_k, in replicate order.
      units: the numbers the interval is over (the replicates, or the cluster means).
      df: degrees of freedom (units - 1).
      level: the interval's coverage (e.g. 0.95).
      over: what the units are ("seeds", or the clusters' name, e.g. "pretrainings").
    """

    mean: float
    low: float
    high: float
    per_replicate: List[float]
    units: int
    df: int
    level: float
    over: str = "seeds"

    @property
    def excludes_zero(self) -> bool:
        return bool(np.isfinite(self.low) and (self.low > 0 or self.high < 0))

    def to_json(self) -> dict:
        return dataclasses.asdict(self) | {"excludes_zero": self.excludes_zero}

    @classmethod
    def from_json(cls, e: Optional[dict]) -> Optional["Interval"]:
        """The interval `to_json` wrote (None for None; other keys are ignored)."""
        if e is None:
            return None
        return cls(**{f.name: e[f.name] for f in dataclasses.fields(cls)})


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple:
    """(mean, low, high) of the Student-t interval of the mean of ``values`` (n - 1 df)."""
    v = np.asarray(values, dtype=np.float64)
    v = v[np.isfinite(v)]
    n = len(v)
    if n == 0:
        return float("nan"), float("nan"), float("nan")
    mean = float(v.mean())
    if n < 2:
        return mean, float("nan"), float("nan")
    half = float(_scipy_stats.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / np.sqrt(n))
    return mean, mean - half, mean + half


def paired_interval(
    differences: Sequence[float],
    level: float = 0.95,
    clusters: Optional[Sequence] = None,
    cluster_name: str = "pretrainings",
) -> Interval:
    """The t-interval of per-replicate paired differences.

    Args:
      differences: d_k = metric_A - metric_B of replicate k (same seed, same test set).
      level: coverage of the interval.
      clusters: optional label per replicate (e.g. its pretraining seed); replicates with the same
        label are averaged first and the interval is over the cluster means.
      cluster_name: what the clusters are, for the reports.
    """
    d = np.asarray(differences, dtype=np.float64)
    if clusters is not None:
        labels = list(clusters)
        if len(labels) != len(d):
            raise ValueError(f"{len(labels)} cluster labels for {len(d)} differences")
        units = np.array(
            [d[[i for i, c in enumerate(labels) if c == u]].mean() for u in dict.fromkeys(labels)]
        )
    else:
        units = d
    mean, low, high = t_interval(units, level)
    n = int(np.isfinite(units).sum())
    return Interval(
        mean=mean,  # the centre of the interval: the mean of the units (cluster means if clustered)
        low=low,
        high=high,
        per_replicate=[float(x) for x in d],
        units=n,
        df=max(n - 1, 0),
        level=level,
        over=cluster_name if clusters is not None else "seeds",
    )


def aligned(ids_a: np.ndarray, values_a: np.ndarray, ids_b: np.ndarray, values_b: np.ndarray):
    """The values of two arms on the test items both have (ids sorted), as two arrays."""
    ids = np.intersect1d(ids_a, ids_b)
    order_a, order_b = np.argsort(ids_a), np.argsort(ids_b)
    ia = order_a[np.searchsorted(ids_a[order_a], ids)]
    ib = order_b[np.searchsorted(ids_b[order_b], ids)]
    return values_a[ia], values_b[ib]


def verdict(
    e: Interval, arm: str, ref: str, unit: str, lower_is_better: bool = True, fmt: str = ".3g"
) -> str:
    """One sentence generated from the interval: never claims a difference its interval does not show."""
    lvl = int(round(100 * e.level))
    span = f"{e.mean:+{fmt}} {unit} [{e.low:+{fmt}}, {e.high:+{fmt}}], {lvl} % t-interval over {e.units} {e.over}"
    if e.units < 2 or not np.isfinite(e.low):
        return f"{arm} − {ref}: {e.mean:+{fmt}} {unit} from {e.units} {e.over}: too few for an interval"
    if not e.excludes_zero:
        return f"{arm} − {ref}: {span}: no difference detected"
    better = (e.high < 0) == lower_is_better
    return f"{arm} − {ref}: {span}: {arm} is {'better' if better else 'worse'}"


def format_cell(e: Optional[Interval], fmt: str = "+.3g") -> str:
    """A table cell: mean [low, high], bold where the interval excludes 0."""
    if e is None:
        return "–"
    if not np.isfinite(e.low):
        return f"{e.mean:{fmt}} (n = {e.units})"
    txt = f"{e.mean:{fmt}} [{e.low:{fmt}}, {e.high:{fmt}}]"
    return f"**{txt}**" if e.excludes_zero else txt


def simulate_studies(
    num_studies: int,
    num_seeds: int,
    num_molecules: int,
    seed_std: float,
    molecule_std: float,
    shift: float,
    num_pretrainings: Optional[int] = None,
    pretraining_std: float = 0.0,
    level: float = 0.95,
    rng_seed: int = 0,
) -> Dict[str, float]:
    """Simulated studies shaped like the real ones, for the calibration test.

    Each study has two arms fine-tuned with ``num_seeds`` seeds and tested on the same
    ``num_molecules``. An arm's error on molecule i with seed k is
        difficulty_i + seed effect (std ``seed_std``, independent per arm and seed)
        + pretraining effect (std ``pretraining_std``, arm A only, shared by the seeds of one
          pretraining when ``num_pretrainings`` is set: seed k uses pretraining k mod P)
        + per-molecule noise (std ``molecule_std``) + ``shift`` (arm A only).
    Returns the fraction of studies whose interval excludes 0, and that excluding it with the
    old seed-and-molecule bootstrap's shape (seeds resampled with replacement, min-max like).
    """
    rng = np.random.default_rng(rng_seed)
    hits = 0
    for _ in range(num_studies):
        difficulty = rng.gamma(2.0, 1.0, size=num_molecules)
        clusters = None
        pre = np.zeros(num_seeds)
        if num_pretrainings:
            clusters = [k % num_pretrainings for k in range(num_seeds)]
            pre = rng.normal(0, pretraining_std, size=num_pretrainings)[clusters]
        a = difficulty + rng.normal(0, seed_std, (num_seeds, 1)) + pre[:, None] + shift
        a = a + rng.normal(0, molecule_std, (num_seeds, num_molecules))
        b = (
            difficulty
            + rng.normal(0, seed_std, (num_seeds, 1))
            + rng.normal(0, molecule_std, (num_seeds, num_molecules))
        )
        d = (a - b).mean(axis=1)
        hits += paired_interval(d, level, clusters).excludes_zero
    return {"excludes_zero": hits / num_studies}


def seed_resampling_rate(
    num_studies: int, num_seeds: int, level: float = 0.95, num_boot: int = 400, rng_seed: int = 0
) -> float:
    """How often an interval from resampling the seeds' differences with replacement excludes 0
    with no effect at all (what the studies used before): the contrast in the calibration test."""
    rng = np.random.default_rng(rng_seed)
    hits = 0
    for _ in range(num_studies):
        d = rng.normal(size=num_seeds)
        boot = d[rng.integers(0, num_seeds, size=(num_boot, num_seeds))].mean(axis=1)
        lo, hi = np.quantile(boot, [(1 - level) / 2, (1 + level) / 2])
        hits += lo > 0 or hi < 0
    return hits / num_studies
