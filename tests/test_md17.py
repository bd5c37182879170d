"""MD17-family loaders: the real files of every format, units, splits, and bad input."""

import string
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from conftest import csv_text
from georecon_jax.data import md17
from georecon_jax.data.records import DataError

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
RMD17 = SHARED / "rmd17"
FORMATS = SHARED / "formats"


def need(path: Path) -> str:
    if not path.exists():
        pytest.skip(f"{path} is absent (the shared reference data ship beside the repo, not in it)")
    return str(path)


def test_rmd17_npz_reads_with_units():
    frames, report = md17.read_force_file(need(RMD17 / "rmd17_aspirin_train_01.npz"))
    assert len(frames) == 1000 and report.count == 0
    assert frames.positions.shape == (1000, 21, 3) and frames.forces.shape == (1000, 21, 3)
    assert frames.energy_unit == "kcal/mol" and frames.force_unit == "kcal/mol/Å"
    assert sorted(np.unique(frames.atomic_numbers).tolist()) == [1, 6, 8]
    assert frames.energies.dtype == np.float64 and -406400 < frames.energies.mean() < -406200


def test_sgdml_npz_and_extxyz_read_the_same_molecule():
    sg, _ = md17.read_force_file(need(FORMATS / "md17_ethanol_sgdml.npz"))
    xyz, _ = md17.read_force_file(need(FORMATS / "md17_ethanol_sampledata.extxyz"))
    ccsd, _ = md17.read_force_file(need(FORMATS / "md17_ethanol_ccsd_t_sgdml.npz"))
    reduced, _ = md17.read_force_file(need(FORMATS / "rmd17_ethanol_reduced_100.extxyz"))
    assert len(sg) == 2000 and sg.energies.ndim == 1  # E [n, 1] squeezed
    assert len(xyz) == 2000 and len(ccsd) == 1000 and len(reduced) == 100
    for f in (sg, xyz, ccsd, reduced):
        assert sorted(f.atomic_numbers.tolist()) == [1, 1, 1, 1, 1, 1, 6, 6, 8]
        assert -97300 < f.energies.mean() < -96900  # kcal/mol, ethanol
    # The reordered file keeps its own atom order (H first), parsed from the species column.
    assert reduced.atomic_numbers.tolist()[:6] == [1] * 6
    # extxyz columns: forces are the last three, values as in the file's first line.
    np.testing.assert_allclose(xyz.forces[0, 0], [26.23068692, -14.15197537, 33.37017128])
    np.testing.assert_allclose(xyz.positions[0, 0], [0.32528930, -0.20828107, -0.37292856])


def test_energy_units_convert_explicitly():
    assert md17.convert_energy_units(23.060548, "kcal/mol", "eV") == pytest.approx(1.0)
    assert md17.convert_energy_units(2.0, "eV", "kcal/mol") == pytest.approx(46.121096)
    frames, _ = md17.read_force_file(need(RMD17 / "rmd17_ethanol_train_01.npz"))
    ev = frames.in_units("eV")
    assert ev.energy_unit == "eV" and ev.force_unit == "eV/Å"
    np.testing.assert_allclose(ev.forces * md17.KCAL_PER_MOL_PER_EV, frames.forces, rtol=1e-12)
    with pytest.raises(ValueError, match="unknown energy unit"):
        md17.convert_energy_units(1.0, "hartree", "eV")


def test_split_950_50_and_test_file():
    data, _ = md17.load_md17(
        need(RMD17 / "rmd17_ethanol_train_01.npz"), need(RMD17 / "rmd17_ethanol_test_01.npz"), verbose=False
    )
    assert (len(data["train"]), len(data["validation"]), len(data["test"])) == (950, 50, 1000)
    assert not set(data["train"].frame_ids) & set(data["validation"].frame_ids)
    # Without a test file the test frames are the unused ones.
    data, _ = md17.load_md17(need(FORMATS / "md17_ethanol_sgdml.npz"), verbose=False)
    ids = [set(data[k].frame_ids.tolist()) for k in ("train", "validation", "test")]
    assert [len(s) for s in ids] == [950, 50, 1000] and len(set.union(*ids)) == 2000


def test_to_molecules_subtracts_the_offset_in_float64():
    frames, _ = md17.read_force_file(need(RMD17 / "rmd17_aspirin_train_01.npz"))
    offset = float(frames.energies.mean())
    mols, forces = frames.to_molecules(offset)
    assert len(mols) == 1000 and forces.shape == (21000, 3)
    # float32 of the total (~4e5) would be off by up to ~0.016 kcal/mol; the residual is exact.
    np.testing.assert_allclose(mols.targets[:, 0], frames.energies - offset, atol=1e-5)
    np.testing.assert_array_equal(mols.positions[21:42], frames.positions[1].astype(np.float32))


# ----------------------------------------------------------------------------- bad input


def _rmd17_copy(tmp_path, name, **changes):
    src = np.load(need(RMD17 / "rmd17_ethanol_train_01.npz"))
    arrays = {k: src[k] for k in ("nuclear_charges", "coords", "energies", "forces")}
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    path = tmp_path / name
    np.savez(path, **arrays)
    return str(path)


def test_npz_missing_key_names_file_and_key(tmp_path):
    path = _rmd17_copy(tmp_path, "no_forces.npz", forces=None)
    with pytest.raises(DataError, match=r"no_forces\.npz: missing key\(s\) \['forces'\]"):
        md17.read_force_file(path)


def test_nan_forces_frame_is_named_and_skipped_or_raised(tmp_path):
    forces = np.load(need(RMD17 / "rmd17_ethanol_train_01.npz"))["forces"].copy()
    forces[7, 2, 1] = np.nan
    path = _rmd17_copy(tmp_path, "nan.npz", forces=forces)
    with pytest.raises(DataError, match=r"nan\.npz: frame 7: non-finite forces on atom\(s\) \[2\]"):
        md17.read_force_file(path, strict=True)
    frames, report = md17.read_force_file(path)
    assert len(frames) == 999 and 7 not in frames.frame_ids
    assert report.skipped == [{"record": "frame 7", "reason": "non-finite forces on atom(s) [2]"}]


def test_inconsistent_atom_counts_npz(tmp_path):
    src = np.load(need(RMD17 / "rmd17_ethanol_train_01.npz"))
    path = _rmd17_copy(tmp_path, "short_z.npz", nuclear_charges=src["nuclear_charges"][:8])
    with pytest.raises(
        DataError,
        match=r"short_z\.npz: frame 0 has 9 atoms in coordinates but the "
        r"molecule has 8 atomic numbers",
    ):
        md17.read_force_file(path)


def _xyz_frames(n_frames=5):
    lines = Path(need(FORMATS / "md17_ethanol_sampledata.extxyz")).read_text().splitlines()
    return lines[: 11 * n_frames]


def test_extxyz_wrong_atom_count_names_frame(tmp_path):
    lines = _xyz_frames()
    del lines[3 * 11 + 5]  # frame 3 loses one atom line
    path = tmp_path / "short.extxyz"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(
        DataError,
        match=r"short\.extxyz: frame 3 \(line 34\): the atom count line says "
        r"9 atoms but 8 atom lines",
    ):
        md17.read_force_file(str(path))


def test_extxyz_without_energy_names_frame(tmp_path):
    lines = _xyz_frames()
    lines[2 * 11 + 1] = lines[2 * 11 + 1].split(" energy=")[0] + ' pbc="F F F"'
    path = tmp_path / "noenergy.extxyz"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"noenergy\.extxyz: frame 2 \(line 23\): no energy"):
        md17.read_force_file(str(path))


def test_extxyz_nan_forces_names_frame(tmp_path):
    lines = _xyz_frames()
    parts = lines[4 * 11 + 2].split()
    parts[-1] = "nan"
    lines[4 * 11 + 2] = " ".join(parts)
    path = tmp_path / "nan.extxyz"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"nan\.extxyz: frame 4: non-finite forces on atom\(s\) \[0\]"):
        md17.read_force_file(str(path), strict=True)


def test_too_few_frames_for_the_split():
    with pytest.raises(DataError, match="100 frames are too few for 950 training"):
        md17.load_md17(need(FORMATS / "rmd17_ethanol_reduced_100.extxyz"), verbose=False)


# ------------------------------------------------- the readers on malformed input (property-based)

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
