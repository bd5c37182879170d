"""Downloads that are verified: streamed to a ``.part`` file renamed only when complete, then
checked against a pinned digest (a mismatch deletes the file and fails). Used by data_prep.md17
and data_prep.pcqm4mv2; the tests never download."""

from __future__ import annotations

import hashlib
import os
import shutil
import urllib.request
from typing import Optional, Tuple


class ChecksumError(RuntimeError):
    pass


def digest(path: str, algorithm: str = "sha256") -> str:
    h = hashlib.new(algorithm)
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def download(url: str, path: str, expect: Optional[Tuple[str, str]] = None, pin_hint: str = "pin it") -> str:
    """Downloads ``url`` to ``path`` unless it exists; verifies ``expect`` = (algorithm, hex digest)
    when given, else prints the SHA-256 it measured. Returns "algorithm:digest" of the file."""
    name = os.path.basename(path)
    if not os.path.exists(path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        print(f"downloading {url} -> {path}")
        part = path + ".part"
        try:
            with urllib.request.urlopen(url, timeout=60) as r, open(part, "wb") as f:
                shutil.copyfileobj(r, f, length=1 << 20)
        except OSError as e:
            if os.path.exists(part):
                os.remove(part)
            raise RuntimeError(
                f"could not download {url} ({e}); without a network, place the file "
                f"at {path} by hand and run again"
            ) from e
        os.replace(part, path)
    if expect:
        algorithm, expected = expect[0], expect[1].lower()
        got = digest(path, algorithm)
        if got != expected:
            os.remove(path)
            raise ChecksumError(
                f"{path}: {algorithm} {got} differs from the expected {expected}; "
                "the file was deleted. Run again to download it afresh (if the "
                "source has changed, check it and update the pinned digest)."
            )
        print(f"{name}: {algorithm} verified")
        return f"{algorithm}:{got}"
    got = digest(path)
    print(f"{name}: no published checksum; sha256 {got} ({pin_hint})")
    return f"sha256:{got}"
