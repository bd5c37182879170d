"""A molecule store: a folder of raw ``.npy`` arrays, read through memory maps.

Layout of a finished store (``<name>/``)::

  atomic_numbers.npy  int16   [n_atoms]
  positions.npy       float32 [n_atoms, 3]   Å
  offsets.npy         int64   [n_molecules + 1]
  ids.npy             int64   [n_molecules]
  targets.npy         float64 [n_molecules, n_targets]
  split_<name>.npy    int64   one per split (train, validation, test)
  meta.json           written last: its presence means the store is complete

`open_store` maps the arrays read-only (``np.load(mmap_mode="r")``): nothing is read until used,
the operating system keeps one copy of the pages for every process of the host, and a corpus
larger than RAM is paged in and out as needed. A `Molecules` opened from a store pickles as the
store's folder (a few hundred bytes), so a worker process that receives it maps the same files
instead of getting a copy of the data.

`StoreWriter` builds a store without holding the corpus in RAM: molecules are appended in chunks
(``_partial/chunk_*.npz``), a small state file records after each chunk how far the source was
read (an opaque cursor of the caller's, e.g. a record count and a byte offset), and `finish`
streams the chunks into the final arrays one at a time. A conversion killed at any point
(``kill -9`` included) resumes from the last chunk and ends with the same arrays as one that was
never interrupted: the arrays do not depend on where the chunks were cut.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import Dict, Optional, Sequence

import numpy as np

from georecon_jax.data.records import DataError, Molecules, SkipReport, file_fingerprint

STORE_VERSION = 1
STORE_FORMAT = "georecon_jax molecule store"
META = "meta.json"
PARTIAL = "_partial"
STATE = "state.json"
ARRAYS = ("atomic_numbers", "positions", "offsets", "ids", "targets")
DTYPES = {
    "atomic_numbers": np.int16,
    "positions": np.float32,
    "offsets": np.int64,
    "ids": np.int64,
    "targets": np.float64,
}
DEFAULT_CHUNK = 50_000  # molecules (or records read) per chunk


class IncompleteStore(DataError):
    """A store folder without its meta.json: absent, being written, or killed while written."""


def _write_json_atomic(path: str, obj) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _fingerprint(path: str):
    """The store's meta.json's fingerprint: a store rebuilt in place has another."""
    return file_fingerprint(os.path.join(path, META))


def _load(path: str):
    """One array of a store, memory-mapped read-only."""
    return np.load(path, mmap_mode="r", allow_pickle=False)


def is_complete(path: str) -> bool:
    return os.path.isfile(os.path.join(path, META))


def open_store(path: str):
    """(molecules, splits, meta) of a finished store; the arrays are read-only memory maps.

    Raises `IncompleteStore` when the folder has no meta.json (absent or never finished), and
    `DataError` when it is unreadable or inconsistent (a caller rebuilds it)."""
    meta_path = os.path.join(path, META)
    if not os.path.isfile(meta_path):
        raise IncompleteStore(f"{path}: not a finished molecule store (no {META})")
    try:
        with open(meta_path) as f:
            meta = json.load(f)
    except (OSError, ValueError) as e:
        raise DataError(f"{meta_path}: unreadable ({type(e).__name__}: {e})") from e
    if meta.get("format") != STORE_FORMAT or meta.get("version") != STORE_VERSION:
        raise DataError(
            f"{path}: store format {meta.get('format')!r} version {meta.get('version')}, expected "
            f"{STORE_FORMAT!r} version {STORE_VERSION}"
        )
    try:
        arrays = {k: _load(os.path.join(path, f"{k}.npy")) for k in ARRAYS}
        splits = {k: _load(os.path.join(path, f"split_{k}.npy")) for k in meta["splits"]}
    except (OSError, ValueError, KeyError) as e:  # missing or truncated files
        raise DataError(f"{path}: unreadable store ({type(e).__name__}: {e})") from e
    n, n_atoms = meta["n_molecules"], meta["n_atoms"]
    expected = {
        "atomic_numbers": (n_atoms,),
        "positions": (n_atoms, 3),
        "offsets": (n + 1,),
        "ids": (n,),
        "targets": (n, len(meta["target_names"])),
    }
    for k, shape in expected.items():
        if arrays[k].shape != shape or arrays[k].dtype != DTYPES[k]:
            raise DataError(
                f"{path}: {k}.npy is {arrays[k].dtype}{list(arrays[k].shape)}, expected "
                f"{np.dtype(DTYPES[k])}{list(shape)}"
            )
    if int(arrays["offsets"][0]) != 0 or int(arrays["offsets"][-1]) != n_atoms:
        raise DataError(f"{path}: offsets do not span the {n_atoms} atoms")
    for k, idx in splits.items():
        if len(idx) and (int(idx.min()) < 0 or int(idx.max()) >= n):
            raise DataError(f"{path}: split {k!r} indexes outside the {n} molecules")
    mols = Molecules(
        atomic_numbers=arrays["atomic_numbers"],
        positions=arrays["positions"],
        offsets=arrays["offsets"],
        targets=arrays["targets"],
        target_names=tuple(meta["target_names"]),
        target_units=tuple(meta["target_units"]),
        ids=arrays["ids"],
    )
    mols._source = (reopen_store_molecules, (os.path.abspath(path), _fingerprint(path)))
    return mols, splits, meta


def reopen_store_molecules(path: str, fingerprint=None) -> Molecules:
    """The molecules of the store at ``path`` (what an unpickled store-backed `Molecules` is).
    ``fingerprint``: the meta.json it was pickled with; a store rebuilt since then is refused."""
    if fingerprint is not None and os.path.isfile(os.path.join(path, META)):
        if _fingerprint(path) != list(fingerprint):
            raise DataError(f"{path}: the store changed since these molecules were sent (rebuilt?)")
    return open_store(path)[0]


def store_size_bytes(path: str) -> int:
    """Bytes on disk of a store's files."""
    total = 0
    for root, _, files in os.walk(path):
        total += sum(os.path.getsize(os.path.join(root, f)) for f in files)
    return total


def remove_store(path: str) -> None:
    """Deletes a store (finished or partial); meta.json goes first, so that a half-deleted store
    is never taken for a finished one."""
    meta = os.path.join(path, META)
    if os.path.exists(meta):
        os.remove(meta)
    shutil.rmtree(path, ignore_errors=True)


class StoreWriter:
    """Builds a store at ``path`` in chunks, resumably (see the module doc).

    ``key`` names what is being converted (source file, its size and time, options): a partial
    store with another key is discarded, one with the same key is resumed. After construction,
    ``cursor`` is the caller's cursor saved with the last chunk (None: start from the beginning).

    Use: ``add`` / ``skip`` per record; when ``full`` is true, ``flush(cursor)``; at the end
    ``flush(cursor)`` once more and ``finish(splits, meta)``.
    """

    def __init__(
        self,
        path: str,
        key,
        chunk_size: int = DEFAULT_CHUNK,
        n_targets: int = 0,
        target_names: Sequence[str] = (),
        target_units: Sequence[str] = (),
    ):
        if chunk_size < 1:
            raise ValueError(f"chunk_size={chunk_size}: must be at least 1")
        self.path, self.key, self.chunk_size = path, key, int(chunk_size)
        self.n_targets = n_targets
        self.target_names, self.target_units = tuple(target_names), tuple(target_units)
        self.partial = os.path.join(path, PARTIAL)
        state = self._read_state()
        if state is None or state.get("key") != key or state.get("version") != STORE_VERSION:
            remove_store(path)  # a finished store being rebuilt, or another conversion's leftovers
            state = {"version": STORE_VERSION, "key": key, "chunks": [], "cursor": None}
        elif is_complete(path):  # a finished store that the caller chose to rebuild
            remove_store(path)
            state = {"version": STORE_VERSION, "key": key, "chunks": [], "cursor": None}
        os.makedirs(self.partial, exist_ok=True)
        self.chunks = state["chunks"]
        self.cursor = state["cursor"]
        self._save_state()
        self._reset_buffer()

    # -------------------------------------------------------------------------- state, buffer
    def _read_state(self) -> Optional[dict]:
        try:
            with open(os.path.join(self.partial, STATE)) as f:
                return json.load(f)
        except (OSError, ValueError):
            return None

    def _save_state(self) -> None:
        _write_json_atomic(
            os.path.join(self.partial, STATE),
            {"version": STORE_VERSION, "key": self.key, "chunks": self.chunks, "cursor": self.cursor},
        )

    def _reset_buffer(self) -> None:
        self._z, self._pos, self._ids, self._targets, self._skipped = [], [], [], [], []
        self._records = 0

    @property
    def resumed(self) -> bool:
        return self.cursor is not None

    @property
    def n_molecules(self) -> int:
        """Molecules written so far (chunks and buffer)."""
        return sum(c["n_molecules"] for c in self.chunks) + len(self._ids)

    @property
    def full(self) -> bool:
        """Whether the buffer holds a chunk's worth of records (kept or skipped)."""
        return self._records >= self.chunk_size

    def add(self, atomic_numbers, positions, molecule_id: int, targets=None) -> None:
        self._z.append(np.asarray(atomic_numbers, DTYPES["atomic_numbers"]))
        self._pos.append(np.asarray(positions, DTYPES["positions"]).reshape(-1, 3))
        self._ids.append(int(molecule_id))
        if self.n_targets:
            self._targets.append(np.asarray(targets, DTYPES["targets"]).reshape(self.n_targets))
        self._records += 1

    def skip(self, record, reason: str) -> None:
        self._skipped.append({"record": record, "reason": reason})
        self._records += 1

    def flush(self, cursor) -> None:
        """Writes the buffered records as the next chunk, then the state with ``cursor`` (where
        the source continues after them). Both writes are atomic: a kill leaves either the old
        state (the chunk is written again) or the new one."""
        if self._records:
            k = len(self.chunks)
            name = f"chunk_{k:06d}.npz"
            counts = np.array([len(z) for z in self._z], np.int64)
            z = np.concatenate(self._z) if self._z else np.zeros(0, DTYPES["atomic_numbers"])
            pos = np.concatenate(self._pos) if self._pos else np.zeros((0, 3), DTYPES["positions"])
            targets = (
                np.stack(self._targets)
                if self._targets
                else np.zeros((len(self._ids), self.n_targets), DTYPES["targets"])
            )
            tmp = os.path.join(self.partial, name + ".tmp.npz")
            np.savez(
                tmp,
                atomic_numbers=z,
                positions=pos,
                counts=counts,
                ids=np.array(self._ids, np.int64),
                targets=targets,
                skipped=np.array(json.dumps(self._skipped)),
            )
            os.replace(tmp, os.path.join(self.partial, name))
            self.chunks.append(
                {
                    "file": name,
                    "n_molecules": len(self._ids),
                    "n_atoms": int(counts.sum()),
                    "n_skipped": len(self._skipped),
                }
            )
            self._reset_buffer()
        self.cursor = cursor
        self._save_state()

    def _chunk(self, c: dict):
        return np.load(os.path.join(self.partial, c["file"]))

    def skip_report(self, source: str, total: int) -> SkipReport:
        """Every skipped record of the conversion, read back from the chunks (``total``: records read)."""
        report = SkipReport(source=source, total=total)
        for c in self.chunks:
            if c["n_skipped"]:
                with self._chunk(c) as f:
                    report.skipped.extend(json.loads(str(f["skipped"])))
        report.skipped.extend(self._skipped)
        return report

    def abort(self) -> None:
        """Deletes the partial store (a conversion that cannot finish, e.g. no usable record)."""
        remove_store(self.path)

    # -------------------------------------------------------------------------------- finish
    def finish(self, splits: Dict[str, np.ndarray], meta: dict):
        """Streams the chunks into the final arrays (one chunk in RAM at a time, written with plain
        file writes: no page of the store is mapped while it is written), then writes meta.json
        and removes the chunks. Returns `open_store` of the result."""
        if self._records:
            raise RuntimeError("flush the buffered records before finish")
        n = sum(c["n_molecules"] for c in self.chunks)
        n_atoms = sum(c["n_atoms"] for c in self.chunks)
        shapes = {
            "atomic_numbers": (n_atoms,),
            "positions": (n_atoms, 3),
            "offsets": (n + 1,),
            "ids": (n,),
            "targets": (n, self.n_targets),
        }
        files = {k: open(os.path.join(self.path, f"{k}.npy"), "wb") for k in ARRAYS}
        try:
            for k, f in files.items():
                np.lib.format.write_array_header_1_0(
                    f,
                    {
                        "descr": np.lib.format.dtype_to_descr(np.dtype(DTYPES[k])),
                        "fortran_order": False,
                        "shape": shapes[k],
                    },
                )
            files["offsets"].write(np.zeros(1, np.int64).tobytes())
            base = 0
            for c in self.chunks:
                with self._chunk(c) as chunk:
                    counts = chunk["counts"]
                    files["atomic_numbers"].write(
                        chunk["atomic_numbers"].astype(DTYPES["atomic_numbers"]).tobytes()
                    )
                    files["positions"].write(chunk["positions"].astype(DTYPES["positions"]).tobytes())
                    files["offsets"].write((base + np.cumsum(counts)).astype(np.int64).tobytes())
                    files["ids"].write(chunk["ids"].astype(np.int64).tobytes())
                    files["targets"].write(chunk["targets"].astype(DTYPES["targets"]).tobytes())
                    base += int(counts.sum())
            for f in files.values():
                f.flush()
                os.fsync(f.fileno())
        finally:
            for f in files.values():
                f.close()
        for k, idx in splits.items():
            tmp = os.path.join(self.path, f"split_{k}.tmp.npy")
            np.save(tmp, np.asarray(idx, np.int64))
            os.replace(tmp, os.path.join(self.path, f"split_{k}.npy"))
        full_meta = dict(meta)
        full_meta.update(
            format=STORE_FORMAT,
            version=STORE_VERSION,
            key=self.key,
            n_molecules=n,
            n_atoms=n_atoms,
            target_names=list(self.target_names),
            target_units=list(self.target_units),
            splits=sorted(splits),
        )
        _write_json_atomic(os.path.join(self.path, META), full_meta)  # last: the store is complete
        shutil.rmtree(self.partial, ignore_errors=True)
        return open_store(self.path)


def write_store(
    path: str,
    molecules: Molecules,
    splits: Dict[str, np.ndarray],
    meta: dict,
    key=None,
    chunk_size: int = DEFAULT_CHUNK,
):
    """A store of in-RAM ``molecules`` (chunked like a conversion); returns `open_store` of it."""
    n_targets = 0 if molecules.targets is None else molecules.targets.shape[1]
    writer = StoreWriter(
        path,
        key=key,
        chunk_size=chunk_size,
        n_targets=n_targets,
        target_names=molecules.target_names,
        target_units=molecules.target_units,
    )
    for m in range(len(molecules)):
        z, pos = molecules.molecule(m)
        writer.add(z, pos, int(molecules.ids[m]), molecules.targets[m] if n_targets else None)
        if writer.full:
            writer.flush({"molecules": m + 1})
    writer.flush({"molecules": len(molecules)})
    return writer.finish(splits, meta)
