"""QM9 loading: real data, units, split, cache rebuild, and bad records reported and skipped."""

import json
import os

import numpy as np
import pytest

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
