"""The ASE calculator (georecon_jax.interop.ase_calculator) of an rMD17 fine-tuning workdir: forces
are -dE/dR, rigid motions leave the energy alone, units are eV and eV/Å of the training data's
kcal/mol, and a trajectory compiles once."""

import importlib.util
import sys

import numpy as np
import pytest

from conftest import random_rotation, require_shared
from finetuned_workdirs import md17_workdir


ase = pytest.importorskip(
    "ase", reason="ASE is optional (pip install 'georecon_jax[ase]'; requirements.txt pins it)"
)

KCAL_PER_EV = 23.060548


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return md17_workdir(tmp_path_factory, require_shared("rmd17"), "ethanol")


@pytest.fixture(scope="module")
def calc(workdir):
    from georecon_jax.interop.ase_calculator import GeoReconCalculator

    return GeoReconCalculator(workdir)


@pytest.fixture(scope="module")
def frames():
    from georecon_jax.data.md17 import read_force_file

    frames, _ = read_force_file(str(require_shared("rmd17/rmd17_ethanol_test_01.npz")))
    return frames


def atoms_of(frames, k=0):
    return ase.Atoms(numbers=frames.atomic_numbers, positions=frames.positions[k])


def energy(calc, atoms, positions=None):
    atoms = atoms.copy()
    if positions is not None:
        atoms.positions = positions
    atoms.calc = calc
    return atoms.get_potential_energy()


def test_forces_are_minus_the_gradient_of_the_energy(calc, frames):
    atoms = atoms_of(frames)
    atoms.calc = calc
    forces = atoms.get_forces()
    assert forces.shape == (len(atoms), 3) and np.abs(forces).max() > 1e-3  # eV/Å of an untrained model
    h = 3e-3  # Å; the network computes in float32 (its rounding: ~2e-6 eV/Å here)
    for flat in np.argsort(-np.abs(forces).ravel())[:4]:  # the largest components
        atom, axis = divmod(int(flat), 3)
        plus, minus = atoms.positions.copy(), atoms.positions.copy()
        plus[atom, axis] += h
        minus[atom, axis] -= h
        numeric = -(energy(calc, atoms, plus) - energy(calc, atoms, minus)) / (2 * h)
        assert numeric == pytest.approx(forces[atom, axis], rel=0.02, abs=1e-5), (atom, axis)


def test_rigid_motions_leave_the_energy_alone_and_turn_the_forces(calc, frames):
    from ase.md.langevin import Langevin
    from ase.md.velocitydistribution import MaxwellBoltzmannDistribution

    atoms = atoms_of(frames, 3)
    atoms.calc = calc
    e, f = atoms.get_potential_energy(), atoms.get_forces()
    moved = atoms.copy()
    rotation = random_rotation(5).astype(np.float64)
    moved.positions = atoms.positions @ rotation.T + np.array([3.0, -7.5, 12.0])
    moved.calc = calc
    assert moved.get_potential_energy() == pytest.approx(e, abs=2e-5)  # eV, of ~ -4200 eV
    np.testing.assert_allclose(moved.get_forces(), f @ rotation.T, atol=1e-4 * np.abs(f).max())

    # A few steps of Langevin dynamics: one compiled shape for the whole trajectory.
    before = calc.model._fn(True)._cache_size()
    MaxwellBoltzmannDistribution(atoms, temperature_K=300, rng=np.random.default_rng(0))
    Langevin(
        atoms,
        0.5 * ase.units.fs,
        temperature_K=300,
        friction=0.01 / ase.units.fs,
        fixcm=False,
        rng=np.random.default_rng(1),
    ).run(5)
    assert np.isfinite(atoms.get_potential_energy()) and calc.model._fn(True)._cache_size() == before


def test_units_are_ev_of_the_training_datas_kcal_per_mol(calc, workdir, frames):
    """The calculator's numbers are evaluate's (kcal/mol, kcal/mol/Å, as the rMD17 files) / 23.060548,
    and its energies lie at the files' reference energies in eV."""
    from georecon_jax.tasks import evaluation

    p = evaluation.predict_split(workdir)  # the tiny config's 12 test frames, in order
    assert p["saved"]["unit"] == "kcal/mol" and calc.to_ev == pytest.approx(1 / KCAL_PER_EV, rel=1e-12)
    n = len(frames.atomic_numbers)
    for k in (0, 7):
        atoms = atoms_of(frames, k)
        atoms.calc = calc
        e, f = atoms.get_potential_energy(), atoms.get_forces()
        assert e * KCAL_PER_EV == pytest.approx(p["predicted"][k], rel=1e-10, abs=1e-3)
        np.testing.assert_allclose(f * KCAL_PER_EV, p["forces_predicted"][k * n : (k + 1) * n], atol=1e-3)
        reference = frames.energies[k] / KCAL_PER_EV  # about -4209 eV
        assert abs(e - reference) < 1e-3 * abs(reference)  # an untrained model, but the right unit and offset
        assert p["reference"][k] == pytest.approx(frames.energies[k])


def test_what_the_calculator_refuses(calc, frames, workdir, qm9_small, tmp_path_factory, monkeypatch):
    atoms = atoms_of(frames)
    atoms.pbc = True
    atoms.cell = [20, 20, 20]
    atoms.calc = calc
    with pytest.raises(ValueError, match="periodic boundary conditions"):
        atoms.get_potential_energy()
    chlorine = atoms_of(frames)
    chlorine.numbers[0] = 17
    chlorine.calc = calc
    with pytest.raises(ValueError, match="Cl never seen in this model's training data"):
        chlorine.get_potential_energy()

    from finetuned_workdirs import qm9_workdir
    from georecon_jax.interop.ase_calculator import GeoReconCalculator

    with pytest.raises(ValueError, match="qm9 homo model predicts no energy"):
        GeoReconCalculator(qm9_workdir(tmp_path_factory, "homo"))

    # Without ASE the module says how to get it.
    for name in ("ase", "ase.calculators", "ase.calculators.calculator"):
        monkeypatch.setitem(sys.modules, name, None)
    spec = importlib.util.spec_from_file_location(
        "calculator_without_ase", sys.modules[GeoReconCalculator.__module__].__file__
    )
    with pytest.raises(ImportError, match=r"pip install 'georecon_jax\[ase\]'"):
        spec.loader.exec_module(importlib.util.module_from_spec(spec))


def test_the_md_example_runs(workdir, tmp_path):
    """examples/md_aspirin.py, a few steps on ethanol: its CSV and plot are written."""
    import runpy

    from ase.io import read

    from conftest import ROOT

    example = runpy.run_path(str(ROOT / "examples" / "md_aspirin.py"))
    data = str(require_shared("rmd17/rmd17_ethanol_test_01.npz"))
    example["main"](
        ["--model", workdir, "--data", data, "--steps", "6", "--every", "3", "--out", str(tmp_path)]
    )
    rows = (tmp_path / "md_aspirin.csv").read_text().splitlines()
    assert len(rows) == 1 + 3 and rows[0].startswith(
        "step,time_ps,potential_eV,kinetic_eV,total_eV,temperature_K"
    )
    assert (tmp_path / "md_aspirin.png").stat().st_size > 0
    assert len(read(str(tmp_path / "md_aspirin.xyz"), index=":")) == 3


def test_the_md_example_reports_the_nve_drift(workdir, tmp_path):
    """examples/md_aspirin.py --ensemble=nve: ASE's VelocityVerlet, no thermostat; the drift it
    reports is the slope of the total energy (meV/ps), checked on a made-up line and on its run."""
    import runpy

    from conftest import ROOT

    example = runpy.run_path(str(ROOT / "examples" / "md_aspirin.py"))
    line = [
        {"time_ps": t, "total_eV": -5.0 + 0.002 * t + 1e-4 * np.sin(40 * t)} for t in np.linspace(0, 1, 101)
    ]
    drift = example["energy_drift"](line)
    assert drift["drift_meV_per_ps"] == pytest.approx(2.0, abs=0.01) and drift["duration_ps"] == 1.0
    data = str(require_shared("rmd17/rmd17_ethanol_test_01.npz"))
    summary = example["main"](
        ["--model", workdir, "--data", data, "--ensemble", "nve", "--steps", "8", "--every", "2",
         "--timestep", "0.25", "--out", str(tmp_path)]
    )  # fmt: skip
    assert summary["steps"] == 8 and summary["duration_ps"] == pytest.approx(0.002)
    rows = [line.split(",") for line in (tmp_path / "md_aspirin.csv").read_text().splitlines()]
    total = np.array([float(r[rows[0].index("total_eV")]) for r in rows[1:]])
    assert summary["max_deviation_meV"] == pytest.approx(1000 * np.abs(total - total[0]).max())
    # The tiny random model's forces are weak (~1e-3 eV/Å): 2 fs of NVE hold the energy to 1e-3 meV.
    assert np.isfinite(summary["drift_meV_per_ps"]) and summary["max_deviation_meV"] < 1e-3
