"""The studies' intervals (georecon_jax/studies/stats.py): right on closed forms, and calibrated on
simulated studies shaped like the real ones (seed effects, pretraining effects shared by the
fine-tuning seeds of one pretraining, per-molecule noise on a shared test set)."""

import numpy as np
import pytest

from georecon_jax.studies import stats


def test_t_interval_closed_form():
    # mean 2, sd 1 over 4 values: half width t_{0.975, 3} * 1 / 2 = 3.182446 / 2
    mean, low, high = stats.t_interval([1.0, 2.0, 3.0, 2.0 + 0.0], 0.95)
    sd = np.std([1, 2, 3, 2], ddof=1)
    assert mean == pytest.approx(2.0)
    assert high - mean == pytest.approx(3.182446305284263 * sd / 2, rel=1e-9)
    assert mean - low == pytest.approx(high - mean, rel=1e-12)


def test_too_few_seeds_give_no_interval_and_no_claim():
    e = stats.paired_interval([-5.0], 0.95)
    assert e.units == 1 and not np.isfinite(e.low) and not e.excludes_zero
    assert "too few for an interval" in stats.verdict(e, "georecon", "scratch", "meV")


def test_clusters_average_first():
    # two pretrainings: replicates 0, 2 share one, 1, 3 the other
    e = stats.paired_interval([1.0, 3.0, 1.0, 3.0], 0.95, clusters=[0, 1, 0, 1])
    assert e.units == 2 and e.df == 1
    assert e.mean == pytest.approx(2.0)
    # the three per-seed numbers (1, 3, 1, 3) are not four independent units
    flat = stats.paired_interval([1.0, 3.0, 1.0, 3.0], 0.95)
    assert flat.df == 3 and (flat.high - flat.low) < (e.high - e.low)


def test_unequal_clusters_report_the_centre_of_their_interval():
    # 5 seeds over 3 pretrainings (0, 3), (1, 4), (2): the mean is that of the 3 cluster means
    e = stats.paired_interval([1.0, 2.0, 6.0, 3.0, 4.0], 0.95, clusters=[0, 1, 2, 0, 1])
    assert e.mean == pytest.approx((2.0 + 3.0 + 6.0) / 3)
    assert e.mean - e.low == pytest.approx(e.high - e.mean)


def test_verdicts_follow_the_interval():
    better = stats.paired_interval([-3.0, -2.5, -3.5, -2.9, -3.1])
    none = stats.paired_interval([-3.0, 2.5, -3.5, 2.9, -3.1])
    assert stats.verdict(better, "A", "B", "meV").endswith("A is better")
    assert stats.verdict(better, "A", "B", "AUC", lower_is_better=False).endswith("A is worse")
    assert stats.verdict(none, "A", "B", "meV").endswith("no difference detected")
    assert stats.format_cell(better).startswith("**") and not stats.format_cell(none).startswith("**")


def test_aligned_matches_ids_in_any_order():
    a, b = stats.aligned(
        np.array([3, 1, 2]), np.array([30.0, 10, 20]), np.array([2, 3, 9]), np.array([2.0, 3, 9])
    )
    np.testing.assert_array_equal(a, [20.0, 30.0])
    np.testing.assert_array_equal(b, [2.0, 3.0])


# The real studies: 5 fine-tuning seeds, 3 pretrainings, 1,000 test molecules, seed std ~ 5 % of
# the error and per-molecule errors as wide as the error itself.
SHAPE = dict(num_seeds=5, num_molecules=1000, seed_std=1.0, molecule_std=20.0)


@pytest.mark.parametrize("clustered", [False, True], ids=["seeds", "pretrainings"])
def test_calibrated_with_no_effect(clustered):
    extra = dict(num_pretrainings=3, pretraining_std=1.0) if clustered else {}
    rate = stats.simulate_studies(1000, shift=0.0, **SHAPE, **extra)["excludes_zero"]
    assert 0.02 <= rate <= 0.08, f"with no effect the 95 % interval excluded 0 in {rate:.1%} of studies"


def test_finds_a_shift_of_two_seed_stds():
    # an arm's seed std: the seed effect and the molecule noise of its mean over the test set
    arm_std = np.sqrt(SHAPE["seed_std"] ** 2 + SHAPE["molecule_std"] ** 2 / SHAPE["num_molecules"])
    rate = stats.simulate_studies(1000, shift=2 * arm_std, **SHAPE)["excludes_zero"]
    assert rate > 0.5, f"a shift of two seed stds was found in only {rate:.1%} of studies"


def test_the_old_seed_resampling_was_not_calibrated():
    # the contrast that motivated the module: resampling 3 seeds excludes 0 ~25 % of the time
    assert stats.seed_resampling_rate(1000, num_seeds=3) > 0.15
