"""Typed, host-side molecule records (numpy only).

A `Molecules` set stores many molecules in flat arrays (CSR layout): atom ``i`` of
molecule ``m`` lives at row ``offsets[m] + i``. This keeps 130k QM9 molecules in a
few contiguous arrays that load from one ``.npz`` in well under a second.
"""

from __future__ import annotations

import dataclasses
import json
import os
import struct
import zipfile
from typing import Optional, Sequence

import numpy as np

# Elements this codebase knows by symbol (QM9, MD17, MD22, drug-like molecules).
ELEMENT_SYMBOLS = (
    "X",
    "H",
    "He",
    "Li",
    "Be",
    "B",
    "C",
    "N",
    "O",
    "F",
    "Ne",
    "Na",
    "Mg",
    "Al",
    "Si",
    "P",
    "S",
    "Cl",
    "Ar",
    "K",
    "Ca",
    "Sc",
    "Ti",
    "V",
    "Cr",
    "Mn",
    "Fe",
    "Co",
    "Ni",
    "Cu",
    "Zn",
    "Ga",
    "Ge",
    "As",
    "Se",
    "Br",
    "Kr",
    "Rb",
    "Sr",
    "Y",
    "Zr",
    "Nb",
    "Mo",
    "Tc",
    "Ru",
    "Rh",
    "Pd",
    "Ag",
    "Cd",
    "In",
    "Sn",
    "Sb",
    "Te",
    "I",
)
SYMBOL_TO_Z = {s: z for z, s in enumerate(ELEMENT_SYMBOLS) if z > 0}
MAX_ATOMIC_NUMBER = len(ELEMENT_SYMBOLS) - 1


class DataError(ValueError):
    """A file or record that cannot be used; the message names the file, record and reason."""


@dataclasses.dataclass
class SkipReport:
    """Records that were skipped while reading a source, with the reason for each."""

    source: str
    skipped: list = dataclasses.field(default_factory=list)  # [{"record": ..., "reason": ...}]
    total: int = 0

    def add(self, record, reason: str):
        self.skipped.append({"record": record, "reason": reason})

    @property
    def count(self) -> int:
        return len(self.skipped)

    def summary(self) -> str:
        if not self.skipped:
            return f"{self.source}: read {self.total} records, skipped none"
        head = "; ".join(f"record {s['record']}: {s['reason']}" for s in self.skipped[:5])
        more = f" (+{self.count - 5} more)" if self.count > 5 else ""
        return f"{self.source}: read {self.total} records, skipped {self.count}: {head}{more}"

    def save(self, path: str):
        with open(path, "w") as f:
            json.dump(dataclasses.asdict(self), f, indent=1)


@dataclasses.dataclass
class Molecules:
    """A set of molecules in CSR layout.

    Attributes:
      atomic_numbers: [n_atoms_total] int, nuclear charges.
      positions: [n_atoms_total, 3] float32, Å.
      offsets: [n_molecules + 1] int64; molecule m is rows offsets[m]:offsets[m+1].
      targets: [n_molecules, n_targets] float64 or None (units: see `target_units`); float64 keeps
        total energies (~1e4 eV) exact to well below a meV. Batches carry them as float32 after
        the fine-tuning code has subtracted references on the host.
      target_names / target_units: names and units of the target columns.
      ids: [n_molecules] int, the source's own identifier of each molecule.
    """

    atomic_numbers: np.ndarray
    positions: np.ndarray
    offsets: np.ndarray
    targets: Optional[np.ndarray] = None
    target_names: Sequence[str] = ()
    target_units: Sequence[str] = ()
    ids: Optional[np.ndarray] = None

    def __post_init__(self):
        if self.ids is None:
            self.ids = np.arange(len(self), dtype=np.int64)

    # A `Molecules` read from files through memory maps (`data.store.open_store`, `load_npz`)
    # carries ``_source = (reopen function, its arguments)`` and pickles as that, not as its data:
    # a worker process that receives it maps the same files (one copy in the host's page cache).
    # Any other `Molecules` (made in RAM, a subset, a `dataclasses.replace`) pickles its arrays.
    def __reduce_ex__(self, protocol):
        source = self.__dict__.get("_source")
        if source is not None:
            return source
        return super().__reduce_ex__(protocol)

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if not k.startswith("_")}

    def __len__(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_atoms(self) -> np.ndarray:
        """[n_molecules] atoms per molecule (read-only; computed once per ``offsets`` array: the
        batchers ask for it every batch, and a store may hold millions of molecules)."""
        cached = self.__dict__.get("_n_atoms")
        if cached is None or cached[0] is not self.offsets:
            n = np.diff(self.offsets)
            n.flags.writeable = False
            cached = (self.offsets, n)
            self.__dict__["_n_atoms"] = cached
        return cached[1]

    def molecule(self, m: int):
        """(atomic_numbers [n], positions [n, 3]) of molecule m."""
        a, b = self.offsets[m], self.offsets[m + 1]
        return self.atomic_numbers[a:b], self.positions[a:b]

    def subset(self, indices) -> "Molecules":
        """A new `Molecules` holding the given molecules, in that order."""
        indices = np.asarray(indices, dtype=np.int64)
        counts = self.n_atoms[indices]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        rows = (
            np.concatenate([np.arange(self.offsets[m], self.offsets[m + 1]) for m in indices])
            if len(indices)
            else np.zeros(0, np.int64)
        )
        return Molecules(
            atomic_numbers=self.atomic_numbers[rows],
            positions=self.positions[rows],
            offsets=offsets,
            targets=None if self.targets is None else self.targets[indices],
            target_names=self.target_names,
            target_units=self.target_units,
            ids=self.ids[indices],
        )

    def save_npz(self, path: str, **extra):
        """Writes an uncompressed ``.npz`` (`load_npz` maps its arrays) atomically."""
        tmp = path + ".tmp.npz"
        np.savez(
            tmp,
            atomic_numbers=self.atomic_numbers,
            positions=self.positions,
            offsets=self.offsets,
            ids=self.ids,
            targets=self.targets if self.targets is not None else np.zeros((len(self), 0)),
            target_names=np.array(self.target_names, dtype=str),
            target_units=np.array(self.target_units, dtype=str),
            **extra,
        )
        os.replace(tmp, path)  # atomic: a half-written cache is never seen under its name.

    @classmethod
    def from_lists(
        cls, atomic_numbers, positions, targets=None, ids=None, target_names=(), target_units=()
    ) -> "Molecules":
        counts = [len(z) for z in atomic_numbers]
        offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(
            atomic_numbers=np.concatenate(atomic_numbers).astype(np.int16)
            if counts
            else np.zeros(0, np.int16),
            positions=np.concatenate(positions).astype(np.float32)
            if counts
            else np.zeros((0, 3), np.float32),
            offsets=offsets,
            targets=None if targets is None else np.asarray(targets, np.float64),
            target_names=tuple(target_names),
            target_units=tuple(target_units),
            ids=None if ids is None else np.asarray(ids, np.int64),
        )


def file_fingerprint(path: str):
    """[size, mtime_ns, inode] of a file: whether a memory-mapped source is still the same file."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino]


def reopen_npz_molecules(path: str, fingerprint=None) -> Molecules:
    """What an unpickled `Molecules` of a memory-mapped ``.npz`` is: the same file, mapped again
    here. ``fingerprint``: the file's when it was pickled; a file rebuilt since is refused."""
    if fingerprint is not None and file_fingerprint(path) != list(fingerprint):
        raise DataError(f"{path}: the file changed since these molecules were sent (rebuilt?)")
    return molecules_from_arrays(load_npz(path), path)


MMAP_MIN_BYTES = 4096  # smaller members (a page) are read: mapping them saves nothing


def load_npz(path: str, mmap: bool = True) -> dict:
    """The arrays of an ``.npz`` file; with ``mmap``, each large member stored uncompressed (what
    `np.savez` and `Molecules.save_npz` write) is a read-only memory map of its bytes inside the
    file, the rest is read. Raises `DataError` on a file that is not a readable ``.npz``."""
    out = {}
    try:
        with zipfile.ZipFile(path) as zf, open(path, "rb") as raw:
            for info in zf.infolist():
                name = info.filename[:-4] if info.filename.endswith(".npy") else info.filename
                arr = None
                if mmap and info.compress_type == zipfile.ZIP_STORED and info.file_size >= MMAP_MIN_BYTES:
                    raw.seek(info.header_offset)
                    local = raw.read(30)
                    if local[:4] != b"PK\x03\x04":
                        raise ValueError(f"member {info.filename}: bad local header")
                    n_name, n_extra = struct.unpack("<HH", local[26:30])
                    raw.seek(info.header_offset + 30 + n_name + n_extra)
                    version = np.lib.format.read_magic(raw)
                    read_header = (
                        np.lib.format.read_array_header_1_0
                        if version == (1, 0)
                        else np.lib.format.read_array_header_2_0
                    )
                    shape, fortran, dtype = read_header(raw)
                    if not dtype.hasobject:
                        arr = np.memmap(
                            path,
                            dtype,
                            mode="r",
                            offset=raw.tell(),
                            shape=shape,
                            order="F" if fortran else "C",
                        )
                if arr is None:
                    with zf.open(info) as f:
                        arr = np.lib.format.read_array(f, allow_pickle=False)
                out[name] = arr
    except (OSError, ValueError, EOFError, zipfile.BadZipFile, struct.error) as e:
        raise DataError(f"{path}: not a readable .npz ({type(e).__name__}: {e})") from e
    return out


def molecules_from_arrays(arrays: dict, path: Optional[str] = None) -> Molecules:
    """The `Molecules` of `load_npz`'s arrays (a file `Molecules.save_npz` wrote). With ``path``
    (the arrays map that file) it pickles as the file."""
    try:
        mols = Molecules(
            atomic_numbers=arrays["atomic_numbers"],
            positions=arrays["positions"],
            offsets=arrays["offsets"],
            targets=arrays["targets"],
            target_names=tuple(arrays["target_names"].tolist()),
            target_units=tuple(arrays["target_units"].tolist()),
            ids=arrays["ids"],
        )
    except KeyError as e:
        raise DataError(f"{path or 'arrays'}: no {e.args[0]!r} array (not a molecule cache)") from e
    n = len(mols)
    if (
        len(mols.offsets) < 1
        or mols.positions.shape != (len(mols.atomic_numbers), 3)
        or int(mols.offsets[-1]) != len(mols.atomic_numbers)
        or len(mols.targets) != n
        or len(mols.ids) != n
    ):
        raise DataError(f"{path or 'arrays'}: inconsistent array sizes")
    if path is not None and isinstance(mols.positions, np.memmap):
        mols._source = (reopen_npz_molecules, (os.path.abspath(path), file_fingerprint(path)))
    return mols


def check_molecule(atomic_numbers, positions) -> Optional[str]:
    """The reason a molecule is unusable, or None if it is fine."""
    atomic_numbers = np.asarray(atomic_numbers)
    positions = np.asarray(positions)
    if atomic_numbers.size == 0:
        return "no atoms"
    if positions.ndim != 2 or positions.shape[1] != 3:
        return f"coordinates have shape {positions.shape}, expected [n_atoms, 3]"
    if positions.shape[0] != atomic_numbers.shape[0]:
        return f"{atomic_numbers.shape[0]} atoms but {positions.shape[0]} coordinate rows"
    if np.any(atomic_numbers < 1) or np.any(atomic_numbers > MAX_ATOMIC_NUMBER):
        return f"atomic numbers out of range 1..{MAX_ATOMIC_NUMBER}: {sorted(set(atomic_numbers.tolist()))}"
    if not np.all(np.isfinite(positions)):
        return "non-finite coordinates"
    return None
