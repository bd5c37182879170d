"""Reads PyTorch checkpoint files (``torch.save``'s zip format, Lightning ``.ckpt`` files) without torch.

A file written by ``torch.save`` (PyTorch >= 1.6) is a zip archive with one folder holding
``data.pkl`` (the pickled object) and ``data/<key>``, the raw bytes of each tensor storage. The
pickle refers to a storage by a persistent id ``("storage", <storage type>, key, location, numel)``
and rebuilds each tensor with ``torch._utils._rebuild_tensor_v2(storage, offset, size, stride,
...)``. `load_torch_file` reads such a file into plain Python and numpy: tensors become numpy
arrays (their dtype kept), ``OrderedDict`` stays one, and Lightning's hyper-parameter containers
(``AttributeDict``, ``argparse.Namespace``) become plain dicts.

Unpickling runs code named by the file. This reader resolves only the globals listed in
`ALLOWED_GLOBALS` (tensor and parameter rebuilders, storage types of float16/32/64, int8/16/32/64,
uint8 and bool, ``OrderedDict``, the hyper-parameter containers, numpy scalars); any other global
stops the read with a `TorchCheckpointError` naming it. The old (pre-1.6, non-zip) format is refused
with a message saying how to re-save the file.
"""

from __future__ import annotations

import argparse
import collections
import io
import pickle
import zipfile
from typing import Any, Dict, Tuple

import numpy as np


class TorchCheckpointError(ValueError):
    """A file that is not a readable torch checkpoint, or that needs a global this reader refuses."""


# Storage types by the name torch pickles them under (torch/<name>), and their numpy dtype.
STORAGE_DTYPES = {
    "FloatStorage": np.float32,
    "DoubleStorage": np.float64,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """What ``torch.<X>Storage`` resolves to: a marker carrying the storage's numpy dtype."""

    def __init__(self, name: str):
        self.name, self.dtype = name, np.dtype(STORAGE_DTYPES[name])

    def __repr__(self):
        return f"torch.{self.name}"


class AttributeDict(dict):
    """Stands in for Lightning's ``AttributeDict`` (a dict with attribute access) while unpickling."""

    def __getattr__(self, key):
        try:
            return self[key]
        except KeyError as e:
            raise AttributeError(key) from e


def _rebuild_tensor_v2(storage, storage_offset, size, stride, requires_grad=False, hooks=None, *metadata):
    """A numpy copy of the tensor ``storage[storage_offset:]`` viewed with ``size`` and ``stride``
    (in elements), after checking that the view stays inside the storage."""
    if not isinstance(storage, np.ndarray):
        raise TorchCheckpointError(f"a tensor is built from {type(storage).__name__}, not a storage")
    size, stride = tuple(int(s) for s in size), tuple(int(s) for s in stride)
    if len(size) != len(stride) or any(s < 0 for s in size) or any(s < 0 for s in stride):
        raise TorchCheckpointError(f"a tensor of size {size} and stride {stride}: not a valid view")
    if any(s == 0 for s in size):
        return np.zeros(size, storage.dtype)
    last = int(storage_offset) + sum((n - 1) * s for n, s in zip(size, stride))
    if storage_offset < 0 or last >= storage.size:
        raise TorchCheckpointError(
            f"a tensor of size {size} at offset {storage_offset} reads past its storage of {storage.size}"
        )
    view = np.lib.stride_tricks.as_strided(
        storage[int(storage_offset) :], shape=size, strides=[s * storage.itemsize for s in stride]
    )
    return np.array(view, copy=True)


def _rebuild_parameter(data, requires_grad=False, hooks=None, *state):
    return data


def _numpy_scalar(dtype, data=None):
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise TorchCheckpointError(f"a numpy scalar of dtype {dtype!r} (only plain numeric dtypes are read)")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _numpy_dtype(name, align=False, copy=False):
    dtype = np.dtype(name)
    if dtype.hasobject:
        raise TorchCheckpointError(f"the numpy dtype {name!r} holds Python objects: refused")
    return dtype


# (module, name) -> what it resolves to. Everything else is refused.
ALLOWED_GLOBALS: Dict[Tuple[str, str], Any] = {
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
    ("torch._utils", "_rebuild_parameter_with_state"): _rebuild_parameter,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("argparse", "Namespace"): argparse.Namespace,
    ("pytorch_lightning.utilities.parsing", "AttributeDict"): AttributeDict,
    ("lightning.pytorch.utilities.parsing", "AttributeDict"): AttributeDict,
    ("lightning.fabric.utilities.data", "AttributeDict"): AttributeDict,
    ("lightning_fabric.utilities.data", "AttributeDict"): AttributeDict,
    ("numpy.core.multiarray", "scalar"): _numpy_scalar,
    ("numpy._core.multiarray", "scalar"): _numpy_scalar,
    ("numpy", "dtype"): _numpy_dtype,
    **{(m, t.__name__): t for m in ("builtins", "__builtin__") for t in (set, frozenset)},
    **{("torch", name): _StorageType(name) for name in STORAGE_DTYPES},
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, data: bytes, archive: zipfile.ZipFile, prefix: str, byteorder: str, path: str):
        super().__init__(io.BytesIO(data))
        self.archive, self.prefix, self.byteorder, self.path = archive, prefix, byteorder, path
        self.storages: Dict[str, np.ndarray] = {}

    def find_class(self, module, name):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise TorchCheckpointError(
                f"{self.path}: the checkpoint's pickle needs the global {module}.{name}, which this reader "
                "does not run (it reads tensors, OrderedDict, numpy scalars and Lightning's hyper-parameter "
                "containers only). Re-save what the import needs with torch: torch.save({'state_dict': "
                "ckpt['state_dict'], 'hyper_parameters': dict(ckpt['hyper_parameters'])}, 'plain.ckpt')"
            ) from None

    def persistent_load(self, pid):
        if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"):
            raise TorchCheckpointError(f"{self.path}: unknown persistent id {str(pid)[:80]!r}")
        _, storage_type, key, _location, numel = pid
        if not isinstance(storage_type, _StorageType):
            raise TorchCheckpointError(f"{self.path}: storage of unknown type {storage_type!r}")
        key = str(key)
        if key not in self.storages:
            name = f"{self.prefix}data/{key}"
            try:
                raw = self.archive.read(name)
            except KeyError:
                raise TorchCheckpointError(f"{self.path}: the archive has no {name}") from None
            dtype = storage_type.dtype.newbyteorder("<" if self.byteorder == "little" else ">")
            if len(raw) < int(numel) * dtype.itemsize:
                raise TorchCheckpointError(
                    f"{self.path}: {name} holds {len(raw)} bytes, fewer than {numel} x {dtype.itemsize}"
                )
            self.storages[key] = np.frombuffer(raw, dtype=dtype, count=int(numel)).astype(
                dtype.newbyteorder("=")
            )
        storage = self.storages[key]
        if storage.dtype != storage_type.dtype:  # one storage viewed as two dtypes: not in torch >= 2
            raise TorchCheckpointError(f"{self.path}: storage {key} read as two dtypes")
        return storage


def plain(obj):
    """Hyper-parameter containers (AttributeDict, argparse.Namespace, OrderedDict) as plain dicts,
    recursively; tensors and everything else as they are."""
    if isinstance(obj, argparse.Namespace):
        obj = vars(obj)
    if isinstance(obj, dict):
        return {k: plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(plain(v) for v in obj)
    return obj


def load_torch_file(path: str):
    """The object a ``torch.save`` zip file holds, tensors as numpy arrays (see the module doc).

    Raises:
      TorchCheckpointError for a file that is not a torch zip archive (e.g. the legacy format), an
      archive without ``data.pkl``, or a pickle needing a global outside `ALLOWED_GLOBALS`.
    """
    if not zipfile.is_zipfile(path):
        with open(path, "rb") as f:
            head = f.read(2)
        legacy = head[:1] == b"\x80"  # a bare pickle: torch's format before 1.6
        raise TorchCheckpointError(
            f"{path}: not a torch zip archive"
            + (
                " (a pickle in torch's legacy format, before 1.6: load it with torch and save it again, "
                "torch.save(obj, 'new.ckpt'), which writes the zip format)"
                if legacy
                else ""
            )
        )
    with zipfile.ZipFile(path) as archive:
        names = archive.namelist()
        pickles = [n for n in names if n.endswith("data.pkl") and n.count("/") == 1]
        if len(pickles) != 1:
            raise TorchCheckpointError(
                f"{path}: expected one <folder>/data.pkl in the archive, found {pickles}"
            )
        prefix = pickles[0][: -len("data.pkl")]
        byteorder = "little"
        if prefix + "byteorder" in names:
            byteorder = archive.read(prefix + "byteorder").decode().strip()
            if byteorder not in ("little", "big"):
                raise TorchCheckpointError(f"{path}: unknown byte order {byteorder!r}")
        try:
            return _Unpickler(archive.read(pickles[0]), archive, prefix, byteorder, path).load()
        except TorchCheckpointError:
            raise
        except (pickle.UnpicklingError, EOFError, TypeError, AttributeError, ValueError) as e:
            raise TorchCheckpointError(f"{path}: unreadable pickle ({type(e).__name__}: {e})") from e
