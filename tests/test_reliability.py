"""Failure modes: corrupt/partial checkpoints, non-finite steps, malformed input files."""

import json
import os
import re
import string

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from georecon_jax.data import qm9
from georecon_jax.data.records import DataError
from georecon_jax.training import steps as steps_lib
from georecon_jax.training.checkpoint import CheckpointError, Checkpointer
from georecon_jax.training.loop import MetricsWriter, fit
from georecon_jax.training.state import create_train_state, make_mesh, replicate
import optax


def _state(value=1.0):
    params = {"w": jnp.full((3,), value, jnp.float32)}
    return create_train_state(lambda p, x: x, params, optax.sgd(0.1), use_ema=False)


def test_corrupt_latest_checkpoint_falls_back_with_a_warning(tmp_path):
    ck = Checkpointer(str(tmp_path))
    ck.save(1, _state(1.0))
    ck.save(2, _state(2.0))
    for root, _, files in os.walk(tmp_path / "checkpoints" / "2"):
        for f in files:
            open(os.path.join(root, f), "wb").write(b"garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        step, state = ck.restore_latest(_state(0.0))
    assert step == 1 and float(state.params["w"][0]) == 1.0


def test_partial_checkpoint_is_never_the_latest(tmp_path):
    ck = Checkpointer(str(tmp_path))
    ck.save(1, _state(1.0))
    os.makedirs(tmp_path / "checkpoints" / "5.orbax-checkpoint-tmp" / "default")
    ck2 = Checkpointer(str(tmp_path))
    assert ck2.latest_step() == 1
    step, _ = ck2.restore_latest(_state(0.0))
    assert step == 1


def test_non_finite_parameters_are_never_saved(tmp_path):
    ck = Checkpointer(str(tmp_path))
    with pytest.raises(CheckpointError, match="non-finite"):
        ck.save(3, _state(float("nan")))
    assert ck.all_steps() == []


class _FakeGraph:
    pass


def _nan_step(max_bad):
    """A train step on a toy loss that is NaN whenever the batch says so."""
    import jraph

    mesh = make_mesh(1)

    def loss_fn(params, graph, key):
        bad = graph.globals[0]
        per_graph = jnp.sum(params["w"] ** 2) * jnp.ones(graph.n_node.shape[0]) + jnp.where(
            bad > 0, jnp.nan, 0.0
        )
        return per_graph, {}

    step = steps_lib.make_train_step(loss_fn, mesh, jax.random.PRNGKey(0))

    def batch(bad):
        g = jraph.GraphsTuple(
            nodes=np.zeros((1, 2, 1), np.float32),
            edges=None,
            senders=np.zeros((1, 1), np.int32),
            receivers=np.zeros((1, 1), np.int32),
            n_node=np.array([[1, 1]], np.int32),
            n_edge=np.array([[1, 0]], np.int32),
            globals=np.array([[bad, bad]], np.float32),
        )
        return g

    return mesh, step, batch


def test_non_finite_step_is_skipped_and_counted():
    mesh, step, batch = _nan_step(3)
    state = replicate(_state(1.0), mesh)
    state, m = step(state, batch(1.0))
    assert float(m["nonfinite"]) == 1.0 and int(state.skipped_steps) == 1
    np.testing.assert_array_equal(np.asarray(state.params["w"]), 1.0)  # untouched
    state, m = step(state, batch(0.0))
    assert float(m["nonfinite"]) == 0.0
    assert float(state.params["w"][0]) < 1.0  # a finite step is applied


def test_too_many_consecutive_non_finite_steps_stop_the_run(tmp_path):
    mesh, step, batch = _nan_step(3)
    state = replicate(_state(1.0), mesh)
    writer = MetricsWriter(str(tmp_path), tensorboard=False)
    with pytest.raises(FloatingPointError, match="consecutive steps"):
        fit(
            state=state,
            train_step=step,
            make_batch=lambda k: batch(1.0),
            place=lambda b: b,
            num_steps=50,
            checkpointer=Checkpointer(str(tmp_path)),
            writer=writer,
            max_consecutive_nonfinite=3,
            progress=False,
        )
    assert Checkpointer(str(tmp_path)).all_steps() == []  # nothing non-finite was written


csv_text = st.text(alphabet=string.printable, max_size=400)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=csv_text, keep_header=st.booleans())
def test_qm9_csv_reader_never_crashes_on_malformed_files(tmp_path_factory, body, keep_header):
    d = tmp_path_factory.mktemp("qm9csv")
    header = (
        "XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,Dipole_debye,"
        "Polarizability_bohr3,HOMO_au,LUMO_au,HOMO_LUMO_gap_au,R2_bohr2,ZPVE_au,"
        "InternalEnergy_0K_au,InternalEnergy_298K_au,Enthalphy_298K_au,GibbsFreeEnergy_298K_au,"
        "Heatcapacity_Cv_cal_mol_K\n"
    )
    (d / "qm9_part1.csv").write_text((header if keep_header else "") + body)
    try:
        mols, report = qm9.read_qm9pack(str(d))
    except DataError as e:
        assert "qm9_part1.csv" in str(e) or str(d) in str(e)
        return
    assert len(mols) + report.count == report.total


def _real_qm9_rows(n=4):
    """The header and the first n rows of qm9pack's first CSV, as lists of fields."""
    import csv
    import itertools

    with open(os.path.join(qm9.qm9pack_data_dir(), "qm9_part1.csv"), newline="") as f:
        reader = csv.reader(f)
        return next(reader), [row for row in itertools.islice(reader, n)]


QM9_HEADER, QM9_ROWS = _real_qm9_rows()
# Fields the reader uses, and damage to one of them: junk, empty, non-finite or truncated.
_USED = ["Index", "Elements", "XYZ_Ang", "HOMO_au", "Dipole_debye", "Heatcapacity_Cv_cal_mol_K"]
_qm9_damage = st.one_of(
    st.text(alphabet=string.printable, max_size=12),
    st.sampled_from(["", "nan", "inf", "-inf"]),
    st.integers(0, 60).map(lambda k: ("truncate", k)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(
        st.tuples(
            st.integers(0, len(QM9_ROWS) - 1),
            st.one_of(st.none(), st.tuples(st.sampled_from(_USED), _qm9_damage)),
        ),
        min_size=1,
        max_size=6,
    )
)
@example(
    rows=[
        (0, None),
        (1, ("XYZ_Ang", ("truncate", 30))),
        (2, ("Index", "x")),
        (3, ("HOMO_au", "nan")),
        (0, ("Index", "1e30")),
    ]
)
def test_qm9_csv_reader_keeps_real_rows_and_reports_damaged_ones(tmp_path_factory, rows):
    """Real qm9pack rows, some with one field damaged: every row is either read with finite
    values or reported with its file and line; undamaged rows are always read."""
    import csv

    d = tmp_path_factory.mktemp("qm9rows")
    written = []
    with open(d / "qm9_part1.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(QM9_HEADER)
        for k, field in rows:
            row = list(QM9_ROWS[k])
            if field is not None:
                col, bad = field
                i = QM9_HEADER.index(col)
                row[i] = row[i][: bad[1]] if isinstance(bad, tuple) else bad
            written.append((row, row == QM9_ROWS[k]))
            w.writerow(row)
    mols, report = qm9.read_qm9pack(str(d))
    assert report.total == len(rows) and len(mols) + report.count == len(rows)
    assert np.all(np.isfinite(mols.positions)) and np.all(np.isfinite(mols.targets))
    skipped_lines = {
        int(re.search(r"qm9_part1\.csv line (\d+)", s["record"]).group(1)) for s in report.skipped
    }
    assert len(skipped_lines) == report.count
    for line, (row, intact) in enumerate(written, start=2):
        if intact:
            assert line not in skipped_lines, (line, report.skipped)
    kept = [row for line, (row, _) in enumerate(written, start=2) if line not in skipped_lines]
    assert mols.ids.tolist() == [int(row[QM9_HEADER.index("Index")]) for row in kept]
    n_atoms = QM9_HEADER.index("N_atoms")
    for m, row in enumerate(kept):
        assert len(mols.molecule(m)[0]) == int(row[n_atoms])


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(csv_text, st.binary(max_size=300)))
def test_qm9_xyz_reader_never_crashes_on_malformed_files(tmp_path_factory, body):
    d = tmp_path_factory.mktemp("qm9xyz")
    path = d / "dsgdb9nsd_000007.xyz"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    mols, report = qm9.read_qm9_xyz_dir(str(d))
    assert len(mols) + report.count == 1
    if report.count:
        assert "dsgdb9nsd_000007.xyz" in report.skipped[0]["record"]


# ----------------------------------------------------------------- MD17-family readers (property-based)

from georecon_jax.data import md17  # noqa: E402

finite = st.floats(-1e3, 1e3, allow_nan=False, width=32)
value = st.one_of(finite, st.just(float("nan")), st.just(float("inf")))


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    n_atoms=st.integers(0, 4),
    n_frames=st.integers(0, 4),
    extra_atoms=st.integers(-1, 1),
    extra_frames=st.integers(-1, 1),
    drop=st.sampled_from([None, "nuclear_charges", "coords", "energies", "forces"]),
    fill=value,
    force_fill=value,
    z=st.integers(-2, 120),
)
@example(
    n_atoms=3, n_frames=2, extra_atoms=0, extra_frames=0, drop=None, fill=1.0, force_fill=float("nan"), z=6
)  # valid file, one non-finite force
def test_rmd17_reader_never_crashes_on_random_arrays(
    tmp_path_factory, n_atoms, n_frames, extra_atoms, extra_frames, drop, fill, force_fill, z
):
    d = tmp_path_factory.mktemp("npz")
    rng = np.random.default_rng(0)
    arrays = {
        "nuclear_charges": np.full(n_atoms, z),
        "coords": rng.normal(size=(n_frames, n_atoms, 3)),
        "energies": np.full(max(n_frames + extra_frames, 0), fill),
        "forces": rng.normal(size=(n_frames, max(n_atoms + extra_atoms, 0), 3)),
    }
    if arrays["forces"].size:
        arrays["forces"][-1, -1, -1] = force_fill  # a non-finite force too, not only energies
    arrays.pop(drop, None)
    path = d / "rmd17_random.npz"
    np.savez(path, **arrays)
    try:
        frames, report = md17.read_force_file(str(path))
    except DataError as e:
        assert "rmd17_random.npz" in str(e)
        return
    assert len(frames) + report.count == report.total
    assert np.all(np.isfinite(frames.forces)) and np.all(np.isfinite(frames.energies))
    for s in report.skipped:
        assert s["record"].startswith("frame ")


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(csv_text, st.binary(max_size=300)))
def test_extxyz_reader_never_crashes_on_malformed_files(tmp_path_factory, body):
    d = tmp_path_factory.mktemp("xyz")
    path = d / "random.extxyz"
    path.write_bytes(body if isinstance(body, bytes) else body.encode())
    try:
        frames, report = md17.read_force_file(str(path))
    except DataError as e:
        assert "random.extxyz" in str(e)
        return
    assert len(frames) + report.count == report.total


def _water_extxyz(species: bool) -> str:
    """Two frames of water in extended XYZ, atoms named by symbol or by atomic number."""
    col = "species:S:1" if species else "Z:I:1"
    atoms = [
        ("O", 8, "0.0 0.0 0.0", "0.1 0.0 0.0"),
        ("H", 1, "0.96 0.0 0.0", "-0.1 0.0 0.0"),
        ("H", 1, "-0.24 0.93 0.0", "0.0 0.0 0.0"),
    ]
    frames = []
    for energy in ("-1.5", "-1.25"):
        frames.append(
            f"3\nenergy={energy} Properties={col}:pos:R:3:forces:R:3\n"
            + "".join(f"{sym if species else z} {pos} {force}\n" for sym, z, pos, force in atoms)
        )
    return "".join(frames)


# Damage that once crashed the reader with a ValueError / OverflowError instead of a DataError.
_XYZ_SUBSTITUTIONS = [("pos:R:3", "pos:R:x"), ("\n8 ", "\n70000 ")]
_xyz_damage = st.one_of(
    st.tuples(
        st.floats(0, 1),
        st.integers(0, 3),  # where, how many characters go, what comes in
        st.text(alphabet=string.ascii_letters + string.digits + ":=.- \n", max_size=4),
    ),
    st.sampled_from(_XYZ_SUBSTITUTIONS),
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(species=st.booleans(), damage=_xyz_damage)
@example(species=True, damage=(0.0, 0, ""))
@example(species=True, damage=_XYZ_SUBSTITUTIONS[0])
@example(species=False, damage=_XYZ_SUBSTITUTIONS[1])
def test_extxyz_reader_reads_or_names_the_frame_of_a_damaged_file(tmp_path_factory, species, damage):
    """A valid two-frame file with one small damage (a span of up to 3 characters replaced by up
    to 4, or a known bad substitution): the reader either reads it with finite values or raises
    DataError naming the file and the frame. Never another exception."""
    body = _water_extxyz(species)
    if len(damage) == 2:
        body = body.replace(*damage, 1)
    else:
        at, cut, text = damage
        k = int(at * len(body))
        body = body[:k] + text + body[k + cut :]
    path = tmp_path_factory.mktemp("xyzdamage") / "water.extxyz"
    path.write_text(body)
    try:
        frames, report = md17.read_force_file(str(path))
    except DataError as e:
        assert "water.extxyz" in str(e) and ("frame" in str(e) or "no frames" in str(e)), str(e)
        return
    assert len(frames) + report.count == report.total
    assert np.all(np.isfinite(frames.positions)) and np.all(np.isfinite(frames.forces))
    assert np.all(np.isfinite(frames.energies))
    if body == _water_extxyz(species):
        assert len(frames) == 2 and frames.atomic_numbers.tolist() == [8, 1, 1]


@pytest.mark.slow
def test_finetune_sigkill_then_resume_equals_uninterrupted(tmp_path):
    """Fine-tuning on rMD17 ethanol: kill -9 after a checkpoint, rerun, same parameters as a straight run."""
    import subprocess
    import sys
    from conftest import ROOT, kill_after_first_checkpoint, require_shared
    from georecon_jax.training.checkpoint import restore_params

    data_dir = require_shared("rmd17")

    def cmd(workdir):
        return [
            sys.executable,
            "-m",
            "experiments.finetune",
            "--config=experiments/configs/finetune_md17.py:tiny",
            f"--config.data.data_dir={data_dir}",
            "--config.molecule=ethanol",
            "--config.num_steps=8",
            "--config.checkpoint_every=2",
            "--config.eval_every=100",
            f"--workdir={workdir}",
        ]

    env = dict(os.environ, JAX_PLATFORMS="cpu")
    straight = tmp_path / "straight"
    out = subprocess.run(cmd(straight), cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    killed = tmp_path / "killed"
    assert kill_after_first_checkpoint(cmd(killed), killed / "checkpoints", env)[-1] < 8
    out = subprocess.run(cmd(killed), cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    (sa, a), (sb, b) = restore_params(str(straight)), restore_params(str(killed))
    assert sa == sb == 8
    for x, y in zip(jax.tree_util.tree_leaves(a["params"]), jax.tree_util.tree_leaves(b["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


# ----------------------------------------------------------------- pair CSV reader (property-based)

from georecon_jax.chem.conformers import MoleculeCache  # noqa: E402
from georecon_jax.data import pairs  # noqa: E402

smiles = st.sampled_from(["CCO", "O", "c1ccccc1", "C1CC", "not-a-smiles", "", "[Xe]", "CC(=O)O", "C#N"])
label = st.one_of(
    st.floats(allow_nan=True, allow_infinity=True).map(repr), st.sampled_from(["", "abc", "-1"])
)


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    rows=st.lists(st.tuples(smiles, smiles, label), max_size=6),
    junk=st.one_of(csv_text, st.binary(max_size=60)),
)
def test_pair_csv_reader_reports_and_skips_bad_rows(tmp_path_factory, rows, junk):
    d = tmp_path_factory.mktemp("pairs")
    body = "solute,solvent,Gsolv\n" + "".join(f"{a},{b},{c}\n" for a, b, c in rows)
    path = d / "pairs.csv"
    path.write_bytes(body.encode() + (junk if isinstance(junk, bytes) else junk.encode()))
    cache = MoleculeCache(str(d / "cache"))
    try:
        ds = pairs.load_pairs(
            files=[str(path)],
            smiles_columns=("solute", "solvent"),
            label_columns=("Gsolv",),
            cache=cache,
            num_workers=1,
            verbose=False,
        )
    except DataError as e:
        assert "pairs.csv" in str(e)
        return
    assert len(ds.index1) + ds.skip.count == ds.skip.total
    assert np.all(np.isfinite(ds.labels))
    for s in ds.skip.skipped:
        assert s["record"].startswith("pairs.csv:")
    with pytest.raises(DataError, match="strict"):
        if ds.skip.count:
            pairs.load_pairs(
                files=[str(path)],
                smiles_columns=("solute", "solvent"),
                label_columns=("Gsolv",),
                cache=cache,
                num_workers=1,
                verbose=False,
                strict=True,
            )
        else:
            raise DataError("strict: nothing to skip")


@pytest.mark.slow
def test_pair_finetune_sigkill_then_resume_equals_uninterrupted(tmp_path):
    """3DMRL pretraining through the pretrain command, then fine-tuning on a user's pair file
    (FreeSolv rows, other column names) from its checkpoint: kill -9 after an epoch's checkpoint, rerun the same command: the split resumes from
    its checkpoint and ends with the parameters and test metrics of a straight run; both runs'
    splits count as finished (a third run would skip them)."""
    import subprocess
    import sys
    from conftest import ROOT, kill_after_first_checkpoint, require_shared
    from georecon_jax.training.checkpoint import restore_params

    data_root = require_shared("solvation")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    pretrained = tmp_path / "mrl3d"
    pre = [
        sys.executable,
        "-m",
        "experiments.pretrain",
        "--config=experiments/configs/mrl3d.py:tiny",
        f"--config.data.data_root={data_root.parent}",
        f"--workdir={pretrained}",
    ]
    out = subprocess.run(pre, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((pretrained / "summary.json").read_text())["objective"] == "3dmrl"

    # fine-tuned on a pair file a user brings: 40 real FreeSolv rows under other column names, in
    # another order, with an unused column; described on the command line alone (no preset)
    import csv

    user = tmp_path / "my_solvation.csv"
    with open(data_root / "freesolv.csv", newline="") as f, open(user, "w", newline="") as g:
        w = csv.writer(g)
        w.writerow(["note", "dG", "mol_b", "mol_a"])
        for i, r in zip(range(40), csv.DictReader(f)):
            w.writerow([f"row {i}", r["Gsolv"], r["solvent"], r["solute"]])

    def cmd(workdir):
        return [
            sys.executable,
            "-m",
            "experiments.finetune_pairs",
            "--config=experiments/configs/mrl_finetune.py:tiny",
            "--config.data.preset=",
            f"--config.data.files={user}",
            "--config.data.smiles_columns=mol_a,mol_b",
            "--config.data.label_columns=dG",
            "--config.data.task=regression",
            "--config.data.units=kcal/mol",
            f"--config.init_from={pretrained}",
            "--config.num_epochs=4",
            f"--workdir={workdir}",
        ]

    straight = tmp_path / "straight"
    out = subprocess.run(cmd(straight), cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    killed = tmp_path / "killed"
    steps = kill_after_first_checkpoint(cmd(killed), killed / "splits" / "seed0_fold0" / "checkpoints", env)
    final = json.loads((straight / "results.json").read_text())["splits"][0]["num_steps"]
    assert steps[-1] < final
    out = subprocess.run(cmd(killed), cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming from the checkpoint at step" in out.stdout
    split = "splits/seed0_fold0"
    (sa, a), (sb, b) = restore_params(str(straight / split)), restore_params(str(killed / split))
    assert sa == sb == final
    for x, y in zip(jax.tree_util.tree_leaves(a["params"]), jax.tree_util.tree_leaves(b["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (straight, killed))
    assert ra["init"] == f"3DMRL checkpoint {pretrained}"
    assert (ra["task"], ra["units"], ra["task_type"], ra["num_pairs"]) == (
        "my_solvation",
        "kcal/mol",
        "regression",
        40,
    )
    assert all(np.isfinite(v) for v in ra["splits"][0]["test"].values())
    assert (
        ra["test_mean_std"] == rb["test_mean_std"]
        and ra["splits"][0]["best_step"] == rb["splits"][0]["best_step"]
    )
    # a third run would find the split finished and train nothing (run() skips what this says)
    from georecon_jax.tasks.finetune_pairs import split_finished

    assert split_finished(str(killed / split)) and split_finished(str(straight / split))
