"""Pretraining molecules from an SDF file: PCQM4Mv2's 3.4 million DFT structures
(``data_prep/pcqm4mv2.py`` fetches and verifies them), or any file of 3D structures a user brings.

The records are converted once into a molecule store (`data.store`: raw ``.npy`` arrays read
through memory maps, with a random train/validation split stored beside them):
``--config.data.dataset=sdf --config.data.sdf_path=...`` then pretrains on them exactly as on QM9.
Hydrogens are kept as written; a record RDKit cannot read, without 3D coordinates, with implicit
hydrogens or with unusable atoms is skipped and reported by its index (``<store>_skipped.json``),
never lost silently. Coordinates in Å, as SDF files hold them. The store is rebuilt when the
file's size or modification time, the record limit or the split changes.

The conversion streams: records are read one at a time (`iter_sdf_records`, by byte offset) and
written to the store in chunks, so a file larger than RAM converts in a fixed amount of memory.
After each chunk the store's state records how many records were read and the byte offset where
the next one starts: a conversion that was killed (``kill -9`` included) resumes there when
`load_sdf` is called again, and ends with the same store as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from typing import Iterator, Optional, Tuple

import numpy as np
from tqdm import tqdm

from georecon_jax.data.records import DataError, Molecules, SkipReport, check_molecule
from georecon_jax.data.store import (
    DEFAULT_CHUNK,
    IncompleteStore,
    StoreWriter,
    open_store,
)

log = logging.getLogger(__name__)

CACHE_VERSION = 2  # 2: a memory-mapped molecule store (data.store) instead of one .npz
_SEPARATOR = re.compile(rb"^\$\$\$\$[^\n]*(?:\n|\Z)", re.M)
_BLOCK = 1 << 20


def iter_sdf_records(path: str, offset: int = 0) -> Iterator[Tuple[int, bytes]]:
    """(end byte offset, text) of each record of an SDF file from byte ``offset`` (a record's
    start), in order; ``end`` is where the next record starts. A record is everything up to a
    ``$$$$`` line; text after the last one counts as a record when it is not blank (a MOL file).
    Reads 1 MiB at a time: memory does not grow with the file."""
    with open(path, "rb") as f:
        f.seek(offset)
        buf, base, pos, eof = b"", offset, 0, False
        while True:
            m = _SEPARATOR.search(buf, pos)
            if m is None or (m.end() == len(buf) and not eof and not buf.endswith(b"\n")):
                if eof:
                    if buf[pos:].strip():
                        yield base + len(buf), buf[pos:]
                    return
                more = f.read(_BLOCK)
                eof = not more
                buf, base, pos = buf[pos:] + more, base + pos, 0
                continue
            yield base + m.end(), buf[pos : m.start()]
            pos = m.end()


def parse_record(i: int, text: bytes):
    """(name, atomic_numbers, positions, reason or None) of SDF record ``i`` (its bytes), by the
    rules of `chem.structures.read_sdf`: hydrogens kept as written; a record RDKit cannot read,
    one without atoms or 3D coordinates, or one whose hydrogens are implicit gives its reason."""
    from rdkit import Chem

    from georecon_jax.chem.structures import _implicit_hydrogens

    try:
        mol = Chem.MolFromMolBlock(
            text.decode("utf-8", errors="replace"), sanitize=False, removeHs=False, strictParsing=False
        )
    except Exception as e:  # noqa: BLE001 - RDKit raises assorted errors on broken records
        return f"record {i}", None, None, f"RDKit cannot read it ({type(e).__name__}: {e})"
    if mol is None:
        return f"record {i}", None, None, "RDKit cannot read it (a broken molblock)"
    name = (mol.GetProp("_Name").strip() if mol.HasProp("_Name") else "") or f"record {i}"
    if mol.GetNumAtoms() == 0:
        return name, None, None, "no atoms"
    if mol.GetNumConformers() == 0 or not mol.GetConformer().Is3D():
        return name, None, None, "2D coordinates (the model needs a 3D structure)"
    implicit = _implicit_hydrogens(mol)
    if implicit:
        return (
            name,
            None,
            None,
            f"{implicit} hydrogen(s) are implicit (not atoms of the record); the model was trained "
            "with every atom: add them with coordinates, e.g. RDKit's Chem.AddHs(mol, addCoords=True)",
        )
    z = np.array([a.GetAtomicNum() for a in mol.GetAtoms()], np.int64)
    return name, z, np.asarray(mol.GetConformer().GetPositions(), np.float64), None


def _records(path: str, offset: int = 0, first: int = 0):
    """(index, end offset, name, z, positions, reason) of the records from ``offset`` (record
    ``first``), with `check_molecule`'s reasons added."""
    from rdkit import RDLogger

    RDLogger.DisableLog("rdApp.*")
    for i, (end, text) in enumerate(iter_sdf_records(path, offset), start=first):
        name, z, pos, reason = parse_record(i, text)
        yield i, end, name, z, pos, reason or check_molecule(z, pos)


def read_sdf_molecules(path: str, limit: Optional[int] = None, progress: bool = False):
    """(Molecules, SkipReport) of the records of ``path`` (the first ``limit`` only if given), in
    RAM (`convert_sdf` writes a whole file to a store). ``ids`` are the records' 0-based indices
    in the file."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such SDF file")
    name = os.path.basename(path)
    report = SkipReport(source=os.path.abspath(path))
    z_list, pos_list, ids = [], [], []
    records = _records(path)
    for i, _, label, z, pos, reason in tqdm(
        records, desc=f"reading {name}", disable=not progress, unit=" mol"
    ):
        if limit is not None and i >= limit:
            break
        report.total += 1
        if reason:
            report.add(f"{name} record {i} ({label})", reason)
            continue
        z_list.append(z)
        pos_list.append(pos)
        ids.append(i)
    if not z_list:
        raise DataError(f"{path}: no usable record ({report.summary()})")
    return Molecules.from_lists(z_list, pos_list, np.zeros((len(ids), 0)), ids), report


def random_split(n: int, seed: int, validation_fraction: float):
    """A random train/validation split of ``n`` molecules (at least one of each); no test part:
    pretraining is judged downstream."""
    if not 0.0 < validation_fraction < 1.0:
        raise ValueError(f"validation_fraction={validation_fraction}: must be in (0, 1)")
    if n < 2:
        raise DataError(f"{n} usable molecule(s): pretraining needs at least 2 (train and validation)")
    order = np.random.default_rng(seed).permutation(n)
    n_val = min(max(1, int(round(validation_fraction * n))), n - 1)
    return {
        "train": np.sort(order[n_val:]),
        "validation": np.sort(order[:n_val]),
        "test": np.zeros(0, np.int64),
    }


def _cache_key(path: str, limit, split_seed: int, validation_fraction: float) -> str:
    st = os.stat(path)
    return json.dumps(
        [os.path.abspath(path), st.st_size, st.st_mtime_ns, limit, split_seed, validation_fraction]
    )


TAIL = 64  # bytes before a resume offset kept with it, to check the file is the one converted


def _tail(path: str, offset: int) -> str:
    """The ``TAIL`` bytes of ``path`` before byte ``offset``, as hex."""
    with open(path, "rb") as f:
        f.seek(max(0, offset - TAIL))
        return f.read(offset - max(0, offset - TAIL)).hex()


def _cache_path(cache_dir: str, path: str, limit, split_seed: int, validation_fraction: float) -> str:
    """The store folder of a file and its options (``sdf_<stem>_<hash>.store``)."""
    key = _cache_key(path, limit, split_seed, validation_fraction)
    stem = os.path.splitext(os.path.basename(path))[0]
    return os.path.join(
        cache_dir, f"sdf_{stem}_{hashlib.sha1(key.encode()).hexdigest()[:12]}_v{CACHE_VERSION}.store"
    )


def _skipped_path(store: str) -> str:
    return store[: -len(".store")] + "_skipped.json"


def convert_sdf(
    path: str,
    store: str,
    limit: Optional[int] = None,
    split_seed: int = 0,
    validation_fraction: float = 0.05,
    chunk_size: int = DEFAULT_CHUNK,
    progress: bool = True,
):
    """Converts the records of ``path`` (the first ``limit`` if given) into the store folder
    ``store``, streaming, ``chunk_size`` records per chunk; resumes a conversion of the same file
    and options that was interrupted. Returns (molecules, splits, meta, SkipReport)."""
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such SDF file")
    name = os.path.basename(path)
    size = os.path.getsize(path)
    key = _cache_key(path, limit, split_seed, validation_fraction)
    writer = StoreWriter(store, key=key, chunk_size=chunk_size)
    cursor = writer.cursor or {"records": 0, "offset": 0}
    if writer.resumed and cursor.get("tail") != _tail(path, cursor["offset"]):
        # the same size and modification time, other bytes (or a cursor from before the check)
        log.warning(
            "%s: the bytes before byte %d are not those the interrupted conversion read: "
            "converting it again from the start",
            name,
            cursor["offset"],
        )
        writer.abort()
        writer = StoreWriter(store, key=key, chunk_size=chunk_size)
        cursor = {"records": 0, "offset": 0}
    if writer.resumed:
        log.info(
            "resuming the conversion of %s at record %d (byte %d of %d; %d molecules in %d chunks)",
            name,
            cursor["records"],
            cursor["offset"],
            size,
            writer.n_molecules,
            len(writer.chunks),
        )
    n_read, offset = cursor["records"], cursor["offset"]
    with tqdm(
        desc=f"converting {name}",
        initial=n_read,
        unit=" rec",
        unit_scale=True,
        mininterval=2.0,
        disable=not progress,
    ) as bar:
        if limit is None or n_read < limit:
            for i, end, label, z, pos, reason in _records(path, offset, n_read):
                if reason:
                    writer.skip(f"{name} record {i} ({label})", reason)
                else:
                    writer.add(z, pos, i)
                n_read, offset = i + 1, end
                if writer.full:
                    writer.flush({"records": n_read, "offset": offset, "tail": _tail(path, offset)})
                    bar.set_postfix_str(f"{100 * offset / max(size, 1):.0f}% of the file", refresh=False)
                bar.update()
                if limit is not None and n_read >= limit:
                    break
    writer.flush({"records": n_read, "offset": offset, "tail": _tail(path, offset)})
    report = writer.skip_report(os.path.abspath(path), n_read)
    if writer.n_molecules == 0:
        writer.abort()
        raise DataError(f"{path}: no usable record ({report.summary()})")
    try:
        splits = random_split(writer.n_molecules, split_seed, validation_fraction)
    except DataError as e:
        writer.abort()
        raise DataError(f"{path}: {e}") from None
    meta = {"source": os.path.abspath(path), "skipped": report.count, "records": n_read}
    report.save(_skipped_path(store))
    mols, splits, meta = writer.finish(splits, meta)
    return mols, splits, meta, report


def load_sdf(
    path: str,
    cache_dir: Optional[str] = None,
    limit: Optional[int] = None,
    split_seed: int = 0,
    validation_fraction: float = 0.05,
    strict: bool = False,
    verbose: bool = True,
    chunk_size: int = DEFAULT_CHUNK,
):
    """(molecules, splits) of an SDF file, from its store (built on first use, resumed if a
    conversion was interrupted; see the module doc). The molecules' arrays are read-only memory
    maps. ``strict``: raise `DataError` if any record had to be skipped."""
    from georecon_jax.data.qm9 import default_cache_dir

    if not path:
        raise ValueError("data.dataset='sdf' needs data.sdf_path (a .sdf file of 3D structures)")
    if not os.path.isfile(path):
        raise DataError(f"{path}: no such SDF file")
    cache_dir = cache_dir or default_cache_dir()
    os.makedirs(cache_dir, exist_ok=True)
    store = _cache_path(cache_dir, path, limit, split_seed, validation_fraction)
    found = _open_finished(path, store, strict)
    if found is not None:
        return found
    import filelock

    # One conversion at a time per store: runs started together wait for the first one's store
    # (an OS lock, released if its holder is killed; the next holder then resumes the conversion).
    with filelock.FileLock(store + ".lock"):
        found = _open_finished(path, store, strict)
        if found is not None:
            return found
        if verbose:
            log.info("Converting %s into the store %s (once) ...", path, store)
        mols, splits, meta, report = convert_sdf(
            path, store, limit, split_seed, validation_fraction, chunk_size=chunk_size, progress=verbose
        )
    if verbose:
        log.info(report.summary())
    if strict and report.count:
        raise DataError(report.summary())
    return mols, splits


def _open_finished(path: str, store: str, strict: bool):
    """(molecules, splits) of a finished store, or None when it must be (re)built."""
    try:
        mols, splits, meta = open_store(store)
    except IncompleteStore:
        return None  # not built yet, or interrupted: convert_sdf resumes it
    except DataError as e:  # a corrupt or outdated store is rebuilt
        log.info("SDF store %s is unreadable (%s); rebuilding it", store, e)
        return None
    if strict and meta["skipped"]:
        raise DataError(f"{path}: {meta['skipped']} records were skipped (see {_skipped_path(store)})")
    return mols, splits
