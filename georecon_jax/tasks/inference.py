"""Predictions of a fine-tuned model on molecules a user brings: `load_model(path).predict(...)`.

``path`` is a fine-tuning workdir (``experiments.finetune``: its ``config.json``,
``target_stats.json`` and the best checkpoint, EMA weights when the run kept them) or a file
written by ``experiments.export`` (parameters and the resolved config, no orbax needed)::

    from georecon_jax import load_model

    model = load_model("runs/ft_homo")              # or "homo.npz"
    result = model.predict("molecules.xyz")         # .xyz/.extxyz, .sdf, .smi/.txt/.csv of SMILES
    result.values                                   # [n] in model.unit, NaN where a row failed
    result.errors                                   # [n] None or the reason, naming file and row
    result.to_csv("out.csv")
    model.predict_smiles(["CCO", "c1ccccc1"])       # one seeded ETKDG conformer each
    model.predict([(atomic_numbers, positions)])    # arrays (Å), or ASE Atoms

Numbers are those of ``experiments.evaluate``: the same network output, plus the per-element
references (QM9 U0, U, H, G) or the mean training energy (MD17) added in float64 on the host, in
the target's unit (``model.unit``: QM9's eV, D, a0³, ...; MD17's kcal/mol unless the run chose
eV). Energy models (MD17 fine-tuning) also give forces, -dE/dR, in ``model.force_unit``.

Shapes. Molecules are grouped by size into tiers of at most 8, 16, 32, ... atoms (up to
``max_atoms``); a batch of one tier holds ``batch_atoms // tier`` molecules and is padded to that
tier's one shape, so a file compiles once per tier used, never per molecule (a single molecule,
as the ASE calculator asks, uses its tier's one-molecule shape).

Rows that cannot be predicted get an error and the rest still run: a record the reader could not
use (`georecon_jax.data.structures`), an element absent from the model's training data
(``target_stats.json``'s ``elements``; for runs from before it was recorded, QM9's H, C, N, O, F
or the atoms of the MD17 training file), more atoms than ``max_atoms``, or a non-finite output.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import os
from typing import Dict, List, Optional, Sequence, Union

import jax
import ml_collections
import numpy as np

from georecon_jax.data.md17 import read_force_file
from georecon_jax.data.records import ELEMENT_SYMBOLS, Molecules
from georecon_jax.data.structures import Structure, from_arrays, read_structures, smiles_structures
from georecon_jax.graphs.batching import Budget, pack_graphs
from georecon_jax.models.property import create_property_model
from georecon_jax.objectives.supervised import TargetStats, make_predict_fn
from georecon_jax.tasks.evaluation import find_checkpoint, load_workdir_config
from georecon_jax.tasks.property_data import read_target_stats, resolve_config
from georecon_jax.training.checkpoint import restore_params
from georecon_jax.training.loop import complete_saved_config
from georecon_jax.training.precision import matmul_precision_scope

log = logging.getLogger(__name__)

QM9_ELEMENTS = (1, 6, 7, 8, 9)  # H, C, N, O, F
ENERGY_TARGETS = ("U0", "U", "H", "G")  # QM9 targets that are energies (eV)
EXPORT_FORMAT = "georecon_jax.export/1"
MIN_TIER = 8
_JITTED: Dict = {}  # (model config, target statistics, forces) -> jitted network


def tiers(max_atoms: int) -> List[int]:
    """The molecule sizes of the padded shapes: 8, 16, 32, ... up to the first >= ``max_atoms``."""
    out = [MIN_TIER]
    while out[-1] < max_atoms:
        out.append(out[-1] * 2)
    return out


def tier_budget(tier: int, graphs: int) -> Budget:
    """The one padded shape of ``graphs`` molecules of at most ``tier`` atoms (all atom pairs)."""
    return Budget.covering(graphs * tier, graphs * tier * (tier - 1) // 2, graphs)


def symbols(elements) -> str:
    return ", ".join(ELEMENT_SYMBOLS[z] if 0 < z < len(ELEMENT_SYMBOLS) else f"Z={z}" for z in elements)


# ---------------------------------------------------------------------------------------------
# Results.


@dataclasses.dataclass
class Predictions:
    """One row per input molecule, in input order.

    ``values`` [n] float64 in ``unit`` (NaN where the row failed); ``errors`` [n] None or the
    reason; ``forces`` [n] arrays [n_atoms, 3] in ``force_unit`` (energy models; None where the row
    failed or forces were not asked for).
    """

    target: str
    unit: str
    structures: List[Structure]
    values: np.ndarray
    errors: List[Optional[str]]
    forces: Optional[List[Optional[np.ndarray]]] = None
    force_unit: Optional[str] = None

    def __len__(self) -> int:
        return len(self.structures)

    @property
    def ok(self) -> np.ndarray:
        return np.array([e is None for e in self.errors], bool)

    def rows(self) -> List[Dict]:
        out = []
        for k, (s, v, e) in enumerate(zip(self.structures, self.values, self.errors)):
            out.append(
                {
                    "index": k,
                    "name": s.name,
                    "source": s.source,
                    "formula": s.formula,
                    "n_atoms": s.n_atoms if s.atomic_numbers is not None else "",
                    self.target: "" if e is not None else repr(float(v)),
                    "unit": self.unit,
                    "error": e or "",
                }
            )
        return out

    def to_csv(self, path: str) -> None:
        """One row per molecule: index, name, source, formula, n_atoms, <target>, unit, error."""
        rows = self.rows()
        with open(path, "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(
                f, ["index", "name", "source", "formula", "n_atoms", self.target, "unit", "error"]
            )
            writer.writeheader()
            writer.writerows(rows)

    def write_forces(self, path: str) -> int:
        """The forces of the predicted rows: ``.npz`` (CSR arrays ``index`` [m], ``offsets`` [m + 1],
        ``atomic_numbers``, ``positions`` Å, ``forces``, ``energy`` [m], and the units) or extended
        XYZ (``.xyz``/``.extxyz``: species, positions and forces per atom; energy and name in each
        comment line). Returns the number of molecules written."""
        if self.forces is None:
            raise ValueError("these predictions have no forces (an energy model, with forces=True)")
        rows = [k for k in range(len(self)) if self.errors[k] is None and self.forces[k] is not None]
        z = [self.structures[k].atomic_numbers for k in rows]
        pos = [self.structures[k].positions for k in rows]
        f = [self.forces[k] for k in rows]
        if path.lower().endswith((".xyz", ".extxyz")):
            with open(path, "w", encoding="utf-8") as out:
                for k, zk, pk, fk in zip(rows, z, pos, f):
                    name = str(self.structures[k].name).replace('"', "'")
                    out.write(
                        f"{len(zk)}\nProperties=species:S:1:pos:R:3:forces:R:3 energy={self.values[k]!r} "
                        f'energy_unit="{self.unit}" force_unit="{self.force_unit}" index={k} name="{name}"\n'
                    )
                    for a, p, g in zip(zk, pk, fk):
                        out.write(
                            f"{ELEMENT_SYMBOLS[int(a)]} {p[0]:.10f} {p[1]:.10f} {p[2]:.10f} "
                            f"{g[0]:.10g} {g[1]:.10g} {g[2]:.10g}\n"
                        )
            return len(rows)
        counts = [len(zk) for zk in z]
        np.savez(
            path,
            index=np.asarray(rows, np.int64),
            offsets=np.concatenate([[0], np.cumsum(counts)]).astype(np.int64),
            atomic_numbers=np.concatenate(z).astype(np.int64) if rows else np.zeros(0, np.int64),
            positions=np.concatenate(pos) if rows else np.zeros((0, 3)),
            forces=np.concatenate(f) if rows else np.zeros((0, 3)),
            energy=self.values[rows],
            energy_unit=np.array(self.unit),
            force_unit=np.array(self.force_unit),
        )
        return len(rows)


# ---------------------------------------------------------------------------------------------
# The model.


class Model:
    """A fine-tuned property model ready to predict (see the module doc); made by `load_model`."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        params,
        saved: dict,
        *,
        elements: Optional[Sequence[int]] = None,
        source: str = "",
        step: Optional[int] = None,
        checkpoint: str = "",
        uses_ema: bool = False,
        max_atoms: int = 128,
        batch_atoms: int = 512,
        matmul_precision: Optional[str] = None,
    ):
        self.config, self.saved = config, saved
        self.params = jax.device_put(params)  # once, not at every call
        self.task, self.target = config.task, config.target
        self.unit = saved["unit"]
        self.is_energy = self.task == "md17" or self.target in ENERGY_TARGETS
        self.force_unit = f"{self.unit}/Å" if self.is_energy else None
        self.elements = None if elements is None else tuple(sorted(int(z) for z in elements))
        self.source, self.step, self.checkpoint, self.uses_ema = source, step, checkpoint, uses_ema
        if max_atoms < 1 or batch_atoms < 1:
            raise ValueError(f"max_atoms={max_atoms}, batch_atoms={batch_atoms}: both must be positive")
        self.max_atoms, self.batch_atoms = int(max_atoms), int(batch_atoms)
        self.tiers = tiers(self.max_atoms)
        self.matmul_precision = matmul_precision or config.get("matmul_precision") or "highest"
        self.stats = TargetStats(**saved["stats"])
        self.module = create_property_model(config.model)
        self.atomref = np.asarray(saved.get("atomref") or [], np.float64)
        self.energy_offset = float(saved.get("energy_offset", 0.0) or 0.0)
        g = config.graph
        self._edges = dict(neighbor_list=g.neighbor_list, cutoff=config.model.encoder.cutoff, skin=g.skin)
        self.shapes_compiled = set()  # (tier, graphs, forces) seen so far

    def __repr__(self):
        return (
            f"Model({self.task} {self.target} [{self.unit}], {self.source}, {self.checkpoint} step {self.step}"
            f"{', EMA' if self.uses_ema else ''})"
        )

    # --- checks -------------------------------------------------------------------------------

    def problem(self, structure: Structure) -> Optional[str]:
        """Why this model cannot predict ``structure`` (its read error, unseen elements, too many
        atoms), or None."""
        if structure.error:
            return structure.error
        z = structure.atomic_numbers
        if self.elements is not None:
            unseen = sorted(set(int(v) for v in z) - set(self.elements))
            if unseen:
                return (
                    f"{structure.source}: element(s) {symbols(unseen)} never seen in this model's training "
                    f"data (it knows {symbols(self.elements)})"
                )
        if len(z) > self.max_atoms:
            return (
                f"{structure.source}: {len(z)} atoms, more than the budget of {self.max_atoms} "
                "(load_model(..., max_atoms=N) or --max_atoms raises it)"
            )
        return None

    def reference(self, atomic_numbers) -> float:
        """What the host adds to the network's residual: per-element references (QM9) or the
        energy offset (MD17), float64, in the target's unit."""
        z = np.asarray(atomic_numbers, np.int64)
        ref = float(self.atomref[z].sum()) if len(self.atomref) else 0.0
        return ref + self.energy_offset

    # --- the network ----------------------------------------------------------------------------

    def _fn(self, forces: bool):
        """The jitted network of this model's architecture and statistics, shared by every `Model`
        that has them (a model loaded twice, from its workdir and its export, compiles once)."""
        key = (self.config.model.to_json(sort_keys=True), self.stats, forces)
        if key not in _JITTED:
            predict = make_predict_fn(self.module, self.stats, forces)
            _JITTED[key] = jax.jit(lambda params, graph: predict(params, graph, graph.nodes.positions)[:2])
        return _JITTED[key]

    def _run_batch(self, structures: Sequence[Structure], tier: int, graphs: int, forces: bool):
        """Residual outputs [k] float64 and forces [k] of up to ``graphs`` molecules of <= ``tier``
        atoms, in one padded shape."""
        mols = Molecules.from_lists([s.atomic_numbers for s in structures], [s.positions for s in structures])
        graph = pack_graphs(mols, np.arange(len(structures)), tier_budget(tier, graphs), **self._edges)
        with matmul_precision_scope(self.matmul_precision):
            y, f = self._fn(forces)(self.params, graph)
        self.shapes_compiled.add((tier, graphs, forces))
        y = np.asarray(y, np.float64)[: len(structures)]
        per_molecule = None
        if forces:
            f = np.asarray(f, np.float64)
            per_molecule = np.split(f[: mols.offsets[-1]], mols.offsets[1:-1])
        return y, per_molecule

    def _tier(self, n_atoms: int) -> int:
        return next(t for t in self.tiers if n_atoms <= t)

    # --- public -------------------------------------------------------------------------------

    def predict(
        self,
        inputs: Union[str, os.PathLike, Sequence],
        *,
        forces: Optional[bool] = None,
        seed: int = 0,
        mmff: bool = False,
        progress: bool = False,
    ) -> Predictions:
        """Predictions for a file (see `georecon_jax.data.structures` for the formats; ``seed`` and
        ``mmff`` set the ETKDG conformers of SMILES) or a sequence of `Structure` records,
        ``(atomic_numbers, positions)`` pairs (Å) or ASE ``Atoms``.

        ``forces``: also -dE/dR (default: for energy models trained with forces, i.e. MD17).
        """
        structures = self._structures(inputs, seed=seed, mmff=mmff)
        forces = (self.task == "md17") if forces is None else bool(forces)
        if forces and not self.is_energy:
            raise ValueError(f"{self.target} is not an energy: this model has no forces")
        errors = [self.problem(s) for s in structures]
        values = np.full(len(structures), np.nan)
        out_forces = [None] * len(structures) if forces else None
        by_tier: Dict[int, List[int]] = {}
        for k, s in enumerate(structures):
            if errors[k] is None:
                by_tier.setdefault(self._tier(s.n_atoms), []).append(k)
        batches = []
        for tier, rows in sorted(by_tier.items()):
            graphs = max(1, self.batch_atoms // tier)
            batches += [(tier, graphs, rows[a : a + graphs]) for a in range(0, len(rows), graphs)]
        from tqdm import tqdm

        for tier, graphs, rows in tqdm(batches, desc="predict", unit="batch", disable=not progress):
            y, f = self._run_batch([structures[k] for k in rows], tier, graphs, forces)
            for j, k in enumerate(rows):
                if not np.isfinite(y[j]) or (f is not None and not np.all(np.isfinite(f[j]))):
                    errors[k] = f"{structures[k].source}: the model returned a non-finite value"
                    continue
                values[k] = y[j] + self.reference(structures[k].atomic_numbers)
                if f is not None:
                    out_forces[k] = f[j]
        failed = sum(e is not None for e in errors)
        if failed:
            log.info("%d of %d molecules could not be predicted:", failed, len(structures))
            for e in errors:
                if e is not None:
                    log.info("  %s", e)
        return Predictions(
            self.target,
            self.unit,
            structures,
            values,
            errors,
            out_forces,
            self.force_unit if forces else None,
        )

    def predict_smiles(self, smiles: Sequence[str], *, seed: int = 0, mmff: bool = False, **kwargs):
        """`predict` on SMILES strings: one seeded ETKDG conformer each, with every hydrogen."""
        return self.predict(smiles_structures(smiles, seed=seed, mmff=mmff), **kwargs)

    def energy_and_forces(self, atomic_numbers, positions, forces: bool = True):
        """(energy float, forces [n, 3] float64 or None) of one molecule in ``unit`` and
        ``force_unit``, through the molecule's tier's one-molecule shape (the ASE calculator's
        path: compiled once per tier). Raises ValueError when the molecule cannot be predicted."""
        if not self.is_energy:
            raise ValueError(f"{self.target} is not an energy: this model has no energies and forces")
        s = from_arrays(atomic_numbers, positions, "molecule", "molecule")
        problem = self.problem(s)
        if problem:
            raise ValueError(problem)
        y, f = self._run_batch([s], self._tier(s.n_atoms), 1, forces)
        if not np.isfinite(y[0]):
            raise ValueError("the model returned a non-finite energy")
        return float(y[0] + self.reference(s.atomic_numbers)), (f[0] if forces else None)

    def _structures(self, inputs, seed: int, mmff: bool) -> List[Structure]:
        if isinstance(inputs, (str, os.PathLike)):
            return read_structures(os.fspath(inputs), seed=seed, mmff=mmff)
        out = []
        for k, item in enumerate(inputs):
            if isinstance(item, Structure):
                out.append(item)
            elif hasattr(item, "get_atomic_numbers") and hasattr(item, "get_positions"):  # ASE Atoms
                name = item.info.get("name") if hasattr(item, "info") else None
                out.append(
                    from_arrays(
                        item.get_atomic_numbers(), item.get_positions(), name or f"atoms {k}", f"atoms {k}"
                    )
                )
            else:
                z, pos = item
                out.append(from_arrays(z, pos, f"molecule {k}", f"molecule {k}"))
        return out


# ---------------------------------------------------------------------------------------------
# Loading.


def model_elements(config, saved: dict) -> Optional[List[int]]:
    """The elements of the model's training data: ``target_stats.json``'s ``elements``; for runs
    from before it was recorded QM9's five or the MD17 training file's atoms; None (no check, with
    a warning) when they cannot be known."""
    if saved.get("elements"):
        return [int(z) for z in saved["elements"]]
    if config.task == "qm9":
        return list(QM9_ELEMENTS)
    train_file = saved.get("train_file")
    if train_file and os.path.exists(train_file):
        try:
            frames, _ = read_force_file(train_file)
            return sorted({int(z) for z in frames.atomic_numbers})
        except Exception as e:  # noqa: BLE001 - the check is a convenience; say why it is off
            log.warning("cannot read the training file %s (%s): elements are not checked", train_file, e)
            return None
    log.warning("the model's training elements are unknown (no 'elements' in its statistics): not checked")
    return None


def _load_workdir(workdir: str, checkpoint: str):
    config = load_workdir_config(workdir)
    saved = read_target_stats(workdir)
    step_dir, label = find_checkpoint(workdir, checkpoint)
    step, raw = restore_params(step_dir)
    ema = raw.get("ema_params")
    params = ema if ema is not None else raw["params"]
    meta = dict(source=os.path.abspath(workdir), step=int(step), checkpoint=label, uses_ema=ema is not None)
    return config, params, saved, meta


def flatten_params(params, prefix: str = "") -> Dict[str, np.ndarray]:
    """A nested dict of arrays -> {'a/b/c': array}."""
    out = {}
    for key, value in params.items():
        key = str(key)
        if "/" in key:
            raise ValueError(f"parameter name {key!r} contains '/': cannot export it")
        path = f"{prefix}{key}"
        if hasattr(value, "items"):
            out.update(flatten_params(value, path + "/"))
        else:
            out[path] = np.asarray(value)
    return out


def unflatten_params(flat: Dict[str, np.ndarray]) -> Dict:
    out: Dict = {}
    for path, value in flat.items():
        node = out
        *parents, last = path.split("/")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def export_model(workdir: str, out: str, checkpoint: str = "best") -> dict:
    """Writes ``out`` (.npz): every parameter of the checkpoint (EMA weights when the run kept
    them) under ``variables/params/<module path>`` (flax's variable tree, '/'-joined), and as JSON strings the resolved config (``config``),
    ``target_stats.json`` (``target_stats``) and where it came from (``meta``). Reading it needs
    numpy only (``np.load(out)``; no pickles). Returns ``meta``."""
    config, params, saved, meta = _load_workdir(workdir, checkpoint)
    meta = dict(
        meta,
        format=EXPORT_FORMAT,
        task=config.task,
        target=config.target,
        unit=saved["unit"],
        elements=model_elements(config, saved),
    )
    flat = {f"variables/{k}": v for k, v in flatten_params(jax.device_get(params)).items()}
    arrays = dict(
        flat,
        config=np.array(config.to_json_best_effort(sort_keys=True)),
        target_stats=np.array(json.dumps(saved, sort_keys=True)),
        meta=np.array(json.dumps(meta, sort_keys=True)),
    )
    tmp = out + ".tmp.npz"
    np.savez(tmp, **arrays)
    os.replace(tmp, out)
    return meta


def _load_export(path: str):
    with np.load(path, allow_pickle=False) as f:
        for key in ("config", "target_stats", "meta"):
            if key not in f.files:
                raise ValueError(
                    f"{path}: not a georecon_jax export (no '{key}'; write one with experiments.export)"
                )
        meta = json.loads(str(f["meta"]))
        if meta.get("format") != EXPORT_FORMAT:
            raise ValueError(f"{path}: format {meta.get('format')!r}, this code reads {EXPORT_FORMAT!r}")
        config = ml_collections.ConfigDict(complete_saved_config(json.loads(str(f["config"]))))
        saved = json.loads(str(f["target_stats"]))
        prefix = "variables/"
        variables = unflatten_params({k[len(prefix) :]: f[k] for k in f.files if k.startswith(prefix)})
    return resolve_config(config), variables, saved, meta


def load_model(
    path: Union[str, os.PathLike],
    checkpoint: str = "best",
    *,
    max_atoms: int = 128,
    batch_atoms: int = 512,
    matmul_precision: Optional[str] = None,
) -> Model:
    """A `Model` from a fine-tuning workdir (``checkpoint``: 'best', falling back to 'latest'; or
    'latest', or a step) or from a file written by ``experiments.export``.

    ``max_atoms``: larger molecules are refused (per row); ``batch_atoms``: atoms per padded batch;
    ``matmul_precision``: default the run's ``config.matmul_precision``.
    """
    path = os.fspath(path)
    if os.path.isfile(path):
        config, params, saved, meta = _load_export(path)
        elements = meta.get("elements")
        meta["source"] = os.path.abspath(path)
    else:
        config, params, saved, meta = _load_workdir(path, checkpoint)
        elements = model_elements(config, saved)
    return Model(
        config,
        params,
        saved,
        elements=elements,
        source=meta["source"],
        step=meta.get("step"),
        checkpoint=meta.get("checkpoint", ""),
        uses_ema=bool(meta.get("uses_ema")),
        max_atoms=max_atoms,
        batch_atoms=batch_atoms,
        matmul_precision=matmul_precision,
    )
