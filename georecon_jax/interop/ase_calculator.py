"""An ASE calculator of a fine-tuned energy model: energy in eV and forces in eV/Å.

    from ase.io import read
    from georecon_jax.interop.ase_calculator import GeoReconCalculator

    atoms = read("aspirin.xyz")
    atoms.calc = GeoReconCalculator("runs/aspirin")      # a workdir, or an experiments.export .npz
    atoms.get_potential_energy(), atoms.get_forces()     # eV, eV/Å

The model is any energy model of `georecon_jax.load_model`: an MD17-type fine-tuning (energies and
forces, trained in kcal/mol unless its run set ``data.energy_unit='eV'``) or a QM9 U0/U/H/G model
(eV; its forces are the gradient of an energy it was never trained to differentiate). Energies are
the model's totals: the network's output plus the mean training energy (``target_stats.json``'s
``energy_offset``) or the per-element references, converted with 1 eV = 23.060548 kcal/mol.
Forces are -dE/dR of that energy by ``jax.grad`` (conservative, as molecular dynamics needs).

Each call packs the molecule into its size tier's one-molecule shape (8, 16, 32, ... atoms), so a
trajectory compiles once, at its first step. Molecules only: a periodic cell is refused.
"""

from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

try:
    from ase.calculators.calculator import Calculator, all_changes
except ImportError as e:  # ASE is optional
    raise ImportError(
        "georecon_jax.interop.ase_calculator needs ASE, an optional dependency: "
        "pip install 'georecon_jax[ase]' (or pip install ase)"
    ) from e

from georecon_jax.data.md17 import convert_energy_units
from georecon_jax.tasks.inference import Model, load_model


class GeoReconCalculator(Calculator):
    """Energy (eV) and forces (eV/Å) of a fine-tuned georecon_jax energy model (module doc).

    Args:
      model: a `georecon_jax.tasks.inference.Model`, a fine-tuning workdir or an exported ``.npz``.
      checkpoint, max_atoms, matmul_precision: passed to `load_model` when ``model`` is a path.
    """

    implemented_properties = ["energy", "free_energy", "forces"]

    def __init__(
        self,
        model: Union[Model, str, os.PathLike],
        checkpoint: str = "best",
        max_atoms: int = 128,
        matmul_precision: Optional[str] = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        if not isinstance(model, Model):
            model = load_model(model, checkpoint, max_atoms=max_atoms, matmul_precision=matmul_precision)
        if not model.is_energy:
            raise ValueError(
                f"{model.source}: a {model.task} {model.target} model predicts no energy; the ASE "
                "calculator needs an MD17-type fine-tuning (or QM9 U0, U, H, G)"
            )
        self.model = model
        # model unit -> eV (kcal/mol: 1 / 23.060548); forces per Å alike
        self.to_ev = float(convert_energy_units(1.0, model.unit, "eV"))

    def calculate(self, atoms=None, properties=("energy",), system_changes=all_changes):
        super().calculate(atoms, properties, system_changes)
        if np.any(self.atoms.pbc):
            raise ValueError(
                f"periodic boundary conditions {self.atoms.pbc.tolist()}: this model is for isolated "
                "molecules (set atoms.pbc = False)"
            )
        energy, forces = self.model.energy_and_forces(
            self.atoms.get_atomic_numbers(), self.atoms.get_positions(), forces=True
        )
        self.results["energy"] = self.results["free_energy"] = energy * self.to_ev
        self.results["forces"] = forces * self.to_ev
