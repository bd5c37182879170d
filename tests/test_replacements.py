"""Code that replaced hand-written copies gives the numbers of what it replaced, on real data.

scikit-learn's ROC-AUC and average precision against the Mann–Whitney and step-sum code they
replaced (kept here as the reference); the one XYZ reader (`data.xyz`) against digests of what the
two readers before it read from the shared files; the one padding-budget rule (`Budget.covering`)
against the budgets the three copies gave; the one masked mean against the per-slot mean of the
3DMRL encoder; the workdir lock (filelock) refusing a second run.
"""

import hashlib
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from conftest import ROOT, require_shared
from georecon_jax.data import md17
from georecon_jax.data.records import DataError
from georecon_jax.data.structures import read_structures
from georecon_jax.tasks.metrics import average_precision, roc_auc

# ------------------------------------------------------------------------ ROC-AUC, average precision


def hand_written_roc_auc(y, score) -> float:
    """The code scikit-learn replaced: Mann–Whitney U / (n+ n-), ties counted half."""
    y, s = np.asarray(y).ravel() > 0.5, np.asarray(score, np.float64).ravel()
    n_pos, n_neg = y.sum(), (~y).sum()
    order = np.argsort(s, kind="mergesort")
    ranks = np.empty(len(s))
    _, start = np.unique(s[order], return_index=True)
    for a, b in zip(start, np.append(start[1:], len(s))):
        ranks[order[a:b]] = (a + b + 1) / 2.0
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def hand_written_average_precision(y, score) -> float:
    """The code scikit-learn replaced: Σ_k (R_k − R_{k−1}) P_k over groups of tied scores."""
    y, s = np.asarray(y).ravel() > 0.5, np.asarray(score, np.float64).ravel()
    order = np.argsort(-s, kind="mergesort")
    ys, ss = y[order], s[order]
    last = np.r_[np.nonzero(np.diff(ss))[0], len(ss) - 1]
    tp = np.cumsum(ys)[last]
    return float(np.sum(np.diff(np.r_[0.0, tp / y.sum()]) * tp / (last + 1)))


def test_sklearn_scores_equal_the_hand_written_ones_on_ddi_labels():
    """ChChMiner test pairs (real labels), scored by the pair's SMILES length (many ties) and by a
    continuous score; equal to 1e-12."""
    table = pd.read_csv(require_shared("ddi") / "ChChMiner_test.csv")
    y = table["label"].to_numpy() > 0.5
    assert 0 < y.sum() < len(y)
    lengths = (table["smiles_1"].str.len() + table["smiles_2"].str.len()).to_numpy()
    ratio = table["smiles_1"].str.count("C").to_numpy() / (1.0 + table["smiles_2"].str.count("O").to_numpy())
    for score in (lengths, ratio, -lengths):
        assert roc_auc(y, score) == pytest.approx(hand_written_roc_auc(y, score), abs=1e-12)
        assert average_precision(y, score) == pytest.approx(
            hand_written_average_precision(y, score), abs=1e-12
        )
    assert np.isnan(roc_auc(y[y], lengths[y])) and np.isnan(average_precision(y[~y], lengths[~y]))


# --------------------------------------------------------------------------------- the XYZ reader


def digest(*arrays) -> str:
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(a)
        h.update(str(a.dtype).encode() + str(a.shape).encode() + a.tobytes())
    return h.hexdigest()[:16]


# What md17.read_extxyz and structures.read_xyz read from these files before they shared a reader
# (the same digests computed with the code of commit c722735).
FORCE_FILES = {
    "md17_ethanol_sampledata.extxyz": "708c3ce30b255d8f",
    "rmd17_ethanol_reduced_100.extxyz": "593e99308edad4a8",
}
STRUCTURE_FILES = {  # (atoms and positions, names and sources)
    "md17_ethanol_sampledata.extxyz": ("954b87d2fa68a3cd", "be993a8f9b944920"),
    "rmd17_ethanol_reduced_100.extxyz": ("57ed6c7d3435e701", "c2c4fef49e2edc97"),
    "qm9_reduced_100.extxyz": ("2e28c54f5c015f26", "d59041308a2ef6ec"),
}


@pytest.mark.parametrize("name", sorted(FORCE_FILES))
def test_force_frames_are_read_as_before(name):
    frames, _ = md17.read_force_file(str(require_shared("formats") / name))
    assert (
        digest(frames.atomic_numbers, frames.positions, frames.energies, frames.forces) == FORCE_FILES[name]
    )


@pytest.mark.parametrize("name", sorted(STRUCTURE_FILES))
def test_structures_are_read_as_before(name):
    structures = read_structures(str(require_shared("formats") / name))
    assert all(s.error is None for s in structures)
    arrays = [s.atomic_numbers for s in structures] + [s.positions for s in structures]
    labels = repr([(s.name, s.source) for s in structures]).encode()
    assert (digest(*arrays), hashlib.sha256(labels).hexdigest()[:16]) == STRUCTURE_FILES[name]


def test_an_atom_count_that_disagrees_names_the_frame_for_both_callers(tmp_path):
    """Two atoms announced, three atom lines: the frame is wrong, the file ends there."""
    path = tmp_path / "extra.xyz"
    path.write_text(
        "2\nProperties=species:S:1:pos:R:3:forces:R:3 energy=-1.0\n"
        + "H 0 0 0 0 0 0\nH 0 0 0.74 0 0 0\nH 0 0 1.5 0 0 0\n"
    )
    with pytest.raises(
        DataError, match=r"extra\.xyz: frame 0 \(line 1\): the atom count line says 2 atoms but 3"
    ):
        md17.read_force_file(str(path))
    [frame] = read_structures(str(path))
    assert frame.error.startswith("extra.xyz frame 0 (line 1): the atom count line says 2 atoms but 3")


# ------------------------------------------------------------------------------- padding budgets


def test_padding_budgets_are_those_of_the_three_copies():
    """QM9 molecules' sizes: the quantile budgets, the worst case and the prediction tiers give the
    shapes the three copies of the rule gave (numbers from commit c722735)."""
    from georecon_jax.graphs.batching import Budget, estimate_budgets
    from georecon_jax.tasks.inference import tier_budget, tiers

    structures = read_structures(str(require_shared("formats") / "qm9_reduced_100.extxyz"))
    n = np.array([s.n_atoms for s in structures])
    e = n * (n - 1) // 2
    assert estimate_budgets(n, e, 8) == [Budget(84, 416, 9), Budget(104, 640, 9), Budget(128, 928, 9)]
    assert estimate_budgets(n, e, 4, sub_batches=2, num_buckets=4) == [
        Budget(44, 224, 5),
        Budget(48, 256, 5),
        Budget(56, 320, 5),
        Budget(68, 512, 5),
    ]
    assert [tier_budget(t, 3) for t in tiers(40)] == [
        Budget(28, 96, 4),
        Budget(52, 384, 4),
        Budget(100, 1504, 4),
        Budget(196, 6048, 4),
    ]


# ------------------------------------------------------------------------------------ masked mean


def test_the_masked_mean_over_slots_is_the_per_slot_mean():
    """rMD17 aspirin positions in 24 atom slots per molecule (3 padding slots, one empty molecule):
    the graph masked mean over `slot_masks` equals sum(x·mask) / max(sum(mask), 1) over the slots,
    the per-slot mean it replaced."""
    import jax.numpy as jnp

    from georecon_jax.models.graph import masked_mean, slot_masks

    with np.load(require_shared("rmd17") / "rmd17_aspirin_train_01.npz") as d:
        positions = d["coords"][:5].astype(np.float32)  # [5, 21, 3] Å
    x = np.zeros((6, 24, 3), np.float32)
    x[:5, :21] = positions
    mask = np.zeros((6, 24), bool)
    mask[:5, :21] = True
    mask[2, 20] = False  # one atom left out
    w = mask[..., None].astype(np.float32)
    per_slot = (x * w).sum(axis=-2) / np.maximum(w.sum(axis=-2), 1.0)
    pooled = masked_mean(jnp.asarray(x.reshape(-1, 3)), slot_masks(jnp.asarray(mask)))
    np.testing.assert_allclose(np.asarray(pooled), per_slot, rtol=1e-6, atol=1e-6)
    assert np.all(np.asarray(pooled)[5] == 0)


# ------------------------------------------------------------------------------------ workdir lock


def test_the_workdir_lock_refuses_a_second_holder(tmp_path):
    """A second lock, in this process or in another, is refused while the first is held."""
    from georecon_jax.training.loop import workdir_lock

    workdir = str(tmp_path / "run")
    code = "import sys; from georecon_jax.training.loop import workdir_lock\nwith workdir_lock(sys.argv[1]): pass"
    with workdir_lock(workdir):
        with pytest.raises(RuntimeError, match="another run is using the workdir"):
            with workdir_lock(workdir):
                pass
        other = subprocess.run(
            [sys.executable, "-c", code, workdir], cwd=ROOT, capture_output=True, text=True, timeout=120
        )
        assert other.returncode != 0 and "another run is using the workdir" in other.stderr
    with workdir_lock(workdir):  # released
        assert os.path.exists(os.path.join(workdir, ".lock"))
