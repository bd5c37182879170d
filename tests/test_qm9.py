"""QM9 loading: real data, units, split, cache rebuild, and bad records reported and skipped."""

import json
import os
import re
import string

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings, strategies as st

from conftest import csv_text
from georecon_jax.data import qm9
from georecon_jax.data.records import DataError

HEADER = (
    "XYZ_file,Index,SMILES,InChi,N_atoms,Stoichiometry,Elements,XYZ_Ang,Mulliken_pop,"
    "Harmonic_Freq_cmi,RotA_GHz,RotB_GHz,RotC_GHz,Dipole_debye,Polarizability_bohr3,HOMO_au,"
    "LUMO_au,HOMO_LUMO_gap_au,R2_bohr2,ZPVE_au,InternalEnergy_0K_au,InternalEnergy_298K_au,"
    "Enthalphy_298K_au,GibbsFreeEnergy_298K_au,Heatcapacity_Cv_cal_mol_K"
)


def _row(index, elements, xyz, homo="-0.3877"):
    return (
        f'"dsgdb9nsd_{index:06d}.xyz",{index},"C","InChI",{len(elements)},"[0]",'
        f'"{elements}","{xyz}","[0]","[0]",1,1,1,0.5,13.21,{homo},0.1171,0.5048,35.3641,'
        f"0.044749,-40.47893,-40.476062,-40.475117,-40.498597,6.469"
    )


def test_first_molecules_real_values_and_units(qm9_small):
    mols, splits = qm9_small
    assert len(mols) == 400
    z, pos = mols.molecule(0)  # methane
    assert z.tolist() == [6, 1, 1, 1, 1]
    ch = np.linalg.norm(pos[1:] - pos[0], axis=1)
    assert np.allclose(ch, 1.09, atol=0.01)  # C-H bond length in Å
    homo = mols.targets[0, qm9.TARGETS.index("homo")]
    assert homo == pytest.approx(-0.3877 * qm9.HARTREE_TO_EV, rel=1e-5)  # eV
    assert mols.target_units[qm9.TARGETS.index("cv")] == "cal/(mol K)"
    assert sorted(np.concatenate(list(splits.values())).tolist()) == list(range(400))


def test_standard_split_sizes_on_full_size():
    s = qm9.standard_split(130_831, seed=0)
    assert [len(s[k]) for k in ("train", "validation", "test")] == [110_000, 10_000, 10_831]
    assert not set(s["train"]) & set(s["test"])
    assert np.array_equal(s["train"], qm9.standard_split(130_831, seed=0)["train"])


def test_bad_records_are_reported_with_index_and_skipped(tmp_path, capsys):
    good = "[[0,0,0],[0,0,1.09],[1.03,0,-0.36],[-0.51,0.89,-0.36],[-0.51,-0.89,-0.36]]"
    rows = [
        _row(1, "['C','H','H','H','H']", good),
        _row(2, "['C','Xx','H','H','H']", good),  # unknown element
        _row(3, "['C','H','H','H','H']", "[[0,0,0],[0,0,1.09]]"),  # missing coordinates
        _row(4, "['C','H','H','H','H']", good.replace("1.09", "nan")),  # non-finite value
        _row(5, "['C','H','H','H','H']", good, homo="inf"),  # non-finite target
    ]
    (tmp_path / "qm9_part1.csv").write_text(HEADER + "\n" + "\n".join(rows) + "\n")
    mols, report = qm9.read_qm9pack(str(tmp_path))
    assert len(mols) == 1 and mols.ids.tolist() == [1]
    assert report.count == 4
    reasons = {s["record"].split("QM9 index ")[1].rstrip(")"): s["reason"] for s in report.skipped}
    assert "unknown element" in reasons["2"] and "Xx" in reasons["2"]
    assert "coordinate" in reasons["3"]
    assert "non-finite coordinates" in reasons["4"]
    assert "non-finite target" in reasons["5"]
    assert "qm9_part1.csv line 3" in report.skipped[0]["record"]
    assert "skipped 4" in report.summary()


def test_xyz_directory_loader(tmp_path):
    text = (
        "5\ngdb 1\t157.7118\t157.70997\t157.70699\t0.\t13.21\t-0.3877\t0.1171\t0.5048\t35.3641"
        "\t0.044749\t-40.47893\t-40.476062\t-40.475117\t-40.498597\t6.469\t\n"
        "C\t-0.0126981359\t 1.0858041578\t 0.0080009958\t-0.535689\n"
        "H\t 0.002150416\t-0.0060313176\t 0.0019761204\t 0.133921\n"
        "H\t 1.0117308433\t 1.4637511618\t 0.0002765748\t 0.133922\n"
        "H\t-0.540815069\t 1.4475266138\t-0.8766437152\t 0.133923\n"
        "H\t-0.5238136345\t 1.4379326443\t 0.9063972942\t 0.133923\n"
        "1341.307\t1341.3284\nC\tC\nInChI=1S/CH4/h1H4\tInChI=1S/CH4/h1H4\n"
    )
    (tmp_path / "dsgdb9nsd_000001.xyz").write_text(text)
    (tmp_path / "dsgdb9nsd_000002.xyz").write_text(text.replace("C\t-0.0126981359", "Q\t-0.0126981359"))
    mols, report = qm9.read_qm9_xyz_dir(str(tmp_path))
    assert len(mols) == 1 and report.count == 1
    assert "dsgdb9nsd_000002.xyz" in report.skipped[0]["record"]
    assert mols.targets[0, qm9.TARGETS.index("U0")] == pytest.approx(-40.47893 * qm9.HARTREE_TO_EV, rel=1e-6)


def test_corrupt_cache_is_rebuilt_and_skip_report_saved(tmp_path, caplog):
    caplog.set_level("INFO", logger="georecon_jax")
    mols, _ = qm9.load_qm9(cache_dir=str(tmp_path), limit=30)
    path = tmp_path / "qm9_first30.npz"
    assert path.exists() and (tmp_path / "qm9_first30_skipped.json").exists()
    report = json.loads((tmp_path / "qm9_first30_skipped.json").read_text())
    assert report["total"] == 30
    path.write_bytes(b"not a zip file")
    again, _ = qm9.load_qm9(cache_dir=str(tmp_path), limit=30)
    assert "unreadable" in caplog.text
    assert np.array_equal(again.positions, mols.positions)
    os.remove(path)
    third, _ = qm9.load_qm9(cache_dir=str(tmp_path), limit=30, verbose=False)
    assert np.array_equal(third.atomic_numbers, mols.atomic_numbers)


def test_missing_source_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no .xyz files"):
        qm9.read_qm9_xyz_dir(str(tmp_path))


def test_cache_of_an_older_version_is_rebuilt(tmp_path, caplog):
    caplog.set_level("INFO", logger="georecon_jax")
    mols, _ = qm9.load_qm9(cache_dir=str(tmp_path), limit=20, verbose=False)
    path = tmp_path / "qm9_first20.npz"
    with np.load(path) as f:
        old = {k: f[k] for k in f.files}
    old["cache_version"] = np.array(qm9.CACHE_VERSION - 1)
    np.savez(path, **old)
    again, _ = qm9.load_qm9(cache_dir=str(tmp_path), limit=20)
    assert "outdated" in caplog.text
    assert np.array_equal(again.positions, mols.positions)
    with np.load(path) as f:
        assert int(f["cache_version"]) == qm9.CACHE_VERSION


# ------------------------------------------------- the readers on malformed input (property-based)


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
