"""The one (extended) XYZ reader: a file -> its frames, each with its atoms or the reason it has none.

A frame is a line with the atom count, a comment line, then one line per atom. The comment line's
``key=value`` pairs are the frame's ``info`` (``energy=``, ``name=``, ``Properties=``...).
``Properties=species:S:1:pos:R:3:forces:R:3`` (extended XYZ, as ASE writes it) names the per-atom
columns; without it a line is ``symbol x y z`` (plain XYZ). Elements are symbols in any case or
atomic numbers (a ``species`` or ``Z`` column); numbers may use QM9's ``*^`` exponents.

What the callers do with a frame's problem differs: `data.md17` refuses the file (`DataError`
naming the file and frame), `data.structures` keeps it as that molecule's error and reads on. A
problem after which no frame boundary can be trusted (a broken atom count line, fewer or more atom
lines than it says) ends the file: that frame is the last one read.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

from georecon_jax.data.records import MAX_ATOMIC_NUMBER, SYMBOL_TO_Z, DataError

_KV = re.compile(r'(\w+)=("[^"]*"|\S+)')
# The columns of a plain XYZ line: symbol x y z.
PLAIN_COLUMNS = {"species": (0, 1), "pos": (1, 3)}


@dataclasses.dataclass
class XYZFrame:
    """One frame: its atoms, or ``error`` (the reason without the file and frame, which
    ``index`` and ``line`` give)."""

    index: int  # 0-based frame number in the file
    line: int  # 1-based line of its atom count
    comment: str = ""
    info: Dict[str, str] = dataclasses.field(default_factory=dict)  # key=value pairs, quotes removed
    atomic_numbers: Optional[np.ndarray] = None  # [n] int64
    vectors: Dict[str, np.ndarray] = dataclasses.field(default_factory=dict)  # {column: [n, 3] float64}
    error: Optional[str] = None
    last: bool = False  # the error loses the frame boundaries: nothing after it is read


def read_xyz_frames(path: str, vectors: Sequence[str] = ("pos",)) -> Iterator[XYZFrame]:
    """Every frame of ``path`` in order, with the per-atom 3-vector columns ``vectors`` (``pos``:
    positions in Å; e.g. ``forces``). Raises `DataError` only for a file that is not text."""
    name = os.path.basename(path)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise DataError(f"{name}: not a text file ({e})") from e
    i, index = 0, 0
    while i < len(lines):
        if not lines[i].strip():
            i += 1
            continue
        frame, i = _read_frame(lines, i, index, vectors)
        yield frame
        if frame.last:
            return
        index += 1


def _read_frame(lines, i: int, index: int, vectors: Sequence[str]) -> Tuple[XYZFrame, int]:
    """(the frame whose atom count is line ``i`` (0-based), the line after it)."""
    count = lines[i].split()[0]
    if not (count.isascii() and count.isdigit()):
        return XYZFrame(index, i + 1, error=f"expected an atom count, found {lines[i][:60]!r}", last=True), i
    if i + 1 >= len(lines):
        return XYZFrame(index, i + 1, error="the file ends before the comment line", last=True), i
    n, comment = int(count), lines[i + 1]
    end = i + 2 + n
    info = {k: v.strip('"') for k, v in _KV.findall(comment)}
    frame = XYZFrame(index, i + 1, comment, info)
    columns, problem = _columns(info, vectors)
    width = max((start + w for start, w in columns.values()), default=4)
    found = 0
    while i + 2 + found < len(lines) and len(lines[i + 2 + found].split()) >= width:
        found += 1
    if found != n:
        frame.error, frame.last = f"the atom count line says {n} atoms but {found} atom lines follow", True
        return frame, end
    if problem:
        frame.error = problem
        return frame, end
    rows = [line.split() for line in lines[i + 2 : end]]
    start = columns["species"][0]
    z = [_element(row[start]) for row in rows]
    unknown = sorted({row[start] for row, v in zip(rows, z) if v is None})
    if unknown:
        frame.error = f"unknown element(s) {unknown}"
        return frame, end
    try:
        for key in vectors:
            start = columns[key][0]
            frame.vectors[key] = np.array([[_number(v) for v in row[start : start + 3]] for row in rows])
    except ValueError as e:
        frame.error = f"unparseable number ({e})"
        return frame, end
    frame.atomic_numbers = np.array(z, np.int64)
    return frame, end


def _columns(info: Dict[str, str], vectors: Sequence[str]) -> Tuple[Dict[str, Tuple[int, int]], str]:
    """({column: (first field, width)}, the problem with them or '') of a frame's comment line:
    ``species`` (or ``Z``) and every one of ``vectors``."""
    if "Properties" not in info:
        missing = [key for key in vectors if key not in PLAIN_COLUMNS]
        if missing:
            return PLAIN_COLUMNS, f"no 'Properties=' in the comment line (no '{missing[0]}' column)"
        return PLAIN_COLUMNS, ""
    spec = info["Properties"]
    parts = spec.split(":")
    if len(parts) % 3:
        return {}, f"cannot parse Properties={spec}"
    columns, start = {}, 0
    for key, _, width in zip(parts[0::3], parts[1::3], parts[2::3]):
        if not (width.isascii() and width.isdigit()):
            return {}, f"cannot parse Properties={spec} (column width {width!r})"
        columns[key] = (start, int(width))
        start += int(width)
    if "species" not in columns and "Z" in columns:
        columns["species"] = columns["Z"]
    for key in ("species", *vectors):
        if key not in columns:
            what = "'species' or 'Z'" if key == "species" else f"'{key}'"
            return columns, f"Properties= has no {what} column ({spec})"
        if key != "species" and columns[key][1] != 3:
            return columns, f"Properties= gives '{key}' {columns[key][1]} values per atom, not 3 ({spec})"
    return columns, ""


def _number(text: str) -> float:
    return float(text.replace("*^", "e"))


def _element(token: str) -> Optional[int]:
    """Atomic number of a symbol (any case: 'CL', 'cl', 'Cl') or of a number; None if unknown."""
    if token.isascii() and token.isdigit():
        z = int(token)
        return z if 1 <= z <= MAX_ATOMIC_NUMBER else None
    return SYMBOL_TO_Z.get(token[:1].upper() + token[1:].lower())
