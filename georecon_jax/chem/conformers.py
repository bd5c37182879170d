"""One 3D conformer per molecule (RDKit ETKDG, fixed seed, optional MMFF), computed once and cached.

`molecule_record(smiles, ...)` turns one SMILES into the record every 3DMRL component uses: the
graph features of `georecon_jax.chem.features` and the conformer's coordinates, with atoms in the
same order. Conformers are embedded with hydrogens added (ETKDG needs them); with
``explicit_h=False`` the hydrogens are then dropped from both the graph and the coordinates
(RDKit's AddHs appends hydrogens after the heavy atoms, so heavy-atom indices are unchanged).

`MoleculeCache` keeps records in one pickle per setting (``explicit_h``, seed, MMFF, feature
version), keyed by canonical SMILES, under ``cache_dir`` (default ``$GEORECON_CACHE`` or
``~/.cache/georecon_jax``). Missing molecules are computed over several processes. Molecules RDKit
cannot parse or embed are cached with their reason, so they are reported (not retried) next time.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import time
from typing import Dict, Iterable, Optional, Tuple

import numpy as np
from rdkit import Chem, RDLogger
from rdkit.Chem import AllChem

from georecon_jax.chem.features import featurize_mol, parse_smiles

log = logging.getLogger(__name__)

FEATURE_VERSION = 1


def default_cache_dir() -> str:
    return os.environ.get("GEORECON_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "georecon_jax")


def embed_conformer(
    mol, seed: int = 0, mmff: bool = False, max_attempts: int = 2
) -> Tuple[Optional[np.ndarray], Optional[str]]:
    """Coordinates [n_atoms_with_H, 3] (Å) of one ETKDGv3 conformer of ``AddHs(mol)``, or (None, reason)."""
    mol_h = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = int(seed)
    if hasattr(params, "timeout"):
        params.timeout = 60
    status = -1
    try:
        status = AllChem.EmbedMolecule(mol_h, params)
        if status != 0 and max_attempts > 1:  # hard cases (macrocycles, cages): random starting coords
            params.useRandomCoords = True
            status = AllChem.EmbedMolecule(mol_h, params)
    except Exception as e:
        return None, f"ETKDG raised {type(e).__name__}: {e}"
    if status != 0:
        return None, "ETKDG found no conformer"
    if mmff:
        try:
            if AllChem.MMFFHasAllMoleculeParams(mol_h):
                AllChem.MMFFOptimizeMolecule(mol_h, maxIters=500)
        except Exception:
            pass  # keep the ETKDG geometry
    pos = mol_h.GetConformer().GetPositions().astype(np.float32)
    if not np.all(np.isfinite(pos)):
        return None, "non-finite coordinates"
    return pos, None


def molecule_record(
    smiles: str, explicit_h: bool = False, seed: int = 0, mmff: bool = False
) -> Tuple[Optional[dict], Optional[str]]:
    """(record, None) or (None, reason); never raises.

    record: the arrays of `featurize_mol` plus ``positions`` [n, 3] (Å) and ``smiles`` (canonical).
    """
    RDLogger.DisableLog("rdApp.*")
    mol, reason = parse_smiles(smiles)
    if mol is None:
        return None, reason
    try:
        pos, reason = embed_conformer(mol, seed=seed, mmff=mmff)
        if pos is None:
            return None, reason
        graph_mol = Chem.AddHs(mol) if explicit_h else mol
        rec = featurize_mol(graph_mol)
        rec["positions"] = pos[: graph_mol.GetNumAtoms()]
        rec["smiles"] = Chem.MolToSmiles(mol)
    except Exception as e:
        return None, f"featurisation failed ({type(e).__name__}: {e})"
    return rec, None


def _work(args):
    smiles, explicit_h, seed, mmff = args
    return smiles, molecule_record(smiles, explicit_h, seed, mmff)


def _start_method() -> str:
    """'fork' while no JAX backend has started (cheap, and works from scripts without a main guard);
    'spawn' once JAX runs threads, which a fork could deadlock."""
    import sys

    xb = sys.modules.get("jax._src.xla_bridge")
    started = bool(getattr(xb, "_backends", None)) if xb is not None else False
    return "spawn" if started else "fork"


class MoleculeCache:
    """Canonical SMILES -> record (or failure reason), persisted as one pickle per setting."""

    def __init__(
        self, cache_dir: Optional[str] = None, explicit_h: bool = False, seed: int = 0, mmff: bool = False
    ):
        self.cache_dir = os.path.join(cache_dir or default_cache_dir(), "mrl_molecules")
        self.explicit_h, self.seed, self.mmff = explicit_h, seed, mmff
        tag = f"v{FEATURE_VERSION}_h{int(explicit_h)}_seed{seed}_mmff{int(mmff)}"
        self.path = os.path.join(self.cache_dir, f"{tag}.pkl")
        self._store: Dict[str, Tuple[Optional[dict], Optional[str]]] = {}
        if os.path.exists(self.path):
            with open(self.path, "rb") as f:
                self._store = pickle.load(f)

    def __contains__(self, key: str) -> bool:
        return key in self._store

    def get(self, key: str):
        return self._store[key]

    def compute(self, smiles: Iterable[str], num_workers: int = 2, verbose: bool = True):
        """Embeds every SMILES (already canonical or raw) not yet cached; saves the cache once."""
        todo = sorted({s for s in smiles if s not in self._store})
        if not todo:
            return
        t0 = time.time()
        jobs = [(s, self.explicit_h, self.seed, self.mmff) for s in todo]
        from tqdm.auto import tqdm

        bar = dict(total=len(jobs), desc="conformers", unit="mol", disable=not verbose or len(jobs) < 50)
        if num_workers > 1 and len(todo) > 8:
            ctx = multiprocessing.get_context(_start_method())
            with ctx.Pool(num_workers) as pool:
                results = list(tqdm(pool.imap_unordered(_work, jobs, chunksize=8), **bar))
        else:
            results = [_work(j) for j in tqdm(jobs, **bar)]
        self._store.update(dict(results))
        if verbose:
            failed = sum(r[0] is None for _, r in results)
            log.info(
                f"conformers: embedded {len(todo) - failed} new molecules, {failed} failed, "
                f"{time.time() - t0:.1f} s on {num_workers} process(es); cache {self.path}"
            )
        os.makedirs(self.cache_dir, exist_ok=True)
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            pickle.dump(self._store, f, protocol=pickle.HIGHEST_PROTOCOL)
        os.replace(tmp, self.path)
