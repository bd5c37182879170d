"""Build the QM9 cache used by pretraining and fine-tuning.

    python -m data_prep.qm9                      # from the qm9pack package (no download)
    python -m data_prep.qm9 --source_dir=DIR     # from the original dsgdb9nsd_*.xyz files
    python -m data_prep.qm9 --download=DIR       # fetch the original files first (needs a network)

Writes ``<cache_dir>/qm9.npz`` (atomic numbers, positions in Å, 12 targets in TorchMD-Net units,
the 110,000 / 10,000 / rest split) and ``qm9_skipped.json`` (every skipped record and why).
"""

import argparse
import hashlib
import os
import tarfile
import urllib.request

from georecon_jax.data.qm9 import default_cache_dir, load_qm9

# The original release (Ramakrishnan et al. 2014) on figshare. This repository records no checksum
# it has not verified itself: the script prints the archive's SHA-256, and checks it against
# --sha256 when you give one.
QM9_XYZ_URL = "https://springernature.figshare.com/ndownloader/files/3195389"


def download(target_dir: str, sha256: str = None) -> str:
    os.makedirs(target_dir, exist_ok=True)
    archive = os.path.join(target_dir, "dsgdb9nsd.xyz.tar.bz2")
    if not os.path.exists(archive):
        print(f"downloading {QM9_XYZ_URL} -> {archive}")
        urllib.request.urlretrieve(QM9_XYZ_URL, archive)
    digest = hashlib.sha256(open(archive, "rb").read()).hexdigest()
    print(f"{archive}: sha256 {digest}")
    if sha256 and digest != sha256:
        raise SystemExit(
            f"{archive}: sha256 {digest} differs from the expected {sha256}; delete it and retry"
        )
    xyz_dir = os.path.join(target_dir, "xyz")
    if not os.path.isdir(xyz_dir):
        with tarfile.open(archive) as tar:
            tar.extractall(xyz_dir, filter="data")
    return xyz_dir


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--cache_dir", default=default_cache_dir())
    p.add_argument("--source_dir", default=None, help="directory of original QM9 .xyz files")
    p.add_argument("--download", default=None, help="download the original .xyz files into this directory")
    p.add_argument("--sha256", default=None, help="expected SHA-256 of the downloaded archive")
    p.add_argument("--split_seed", type=int, default=0)
    p.add_argument("--strict", action="store_true", help="fail if any record would be skipped")
    args = p.parse_args()
    source = download(args.download, args.sha256) if args.download else args.source_dir
    mols, splits = load_qm9(args.cache_dir, source, split_seed=args.split_seed, strict=args.strict)
    print(f"{len(mols)} molecules; split sizes " + ", ".join(f"{k} {len(v)}" for k, v in splits.items()))


if __name__ == "__main__":
    main()
