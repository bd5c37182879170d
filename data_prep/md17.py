"""Download, verify and convert the public MD17-family data sets (rMD17, MD17, MD22).

  python -m data_prep.md17 --dataset=rmd17 [--out=$GEORECON_CACHE/md17] [--molecules=aspirin,ethanol]
  python -m data_prep.md17 --dataset=md17 --molecules=ethanol
  python -m data_prep.md17 --dataset=md22 --molecules=AT-AT

What it does, per archive:
  1. downloads into <out>/downloads/ (skipped when the file is already there), streaming to a
     ``.part`` file that is renamed only when complete;
  2. verifies the checksum when one is known (``CHECKSUMS`` below; a mismatch deletes the file and
     fails); for archives without a published checksum it prints the SHA-256 it measured so that
     the value can be pinned here;
  3. converts every molecule into rMD17-layout ``.npz`` files
     ``<out>/<dataset>_<molecule>_train_01.npz`` (+ ``_test_01`` where the source ships splits) with
     keys nuclear_charges, coords (Å), energies (kcal/mol), forces (kcal/mol/Å), read back through
     ``georecon_jax.data.md17`` (so every frame passes the same checks as at training time), and
     writes ``<out>/manifest.json`` with sources, checksums, frame counts and units.

``finetune_md17.py`` then finds the rMD17 files by ``--config.molecule`` (via $GEORECON_MD17_DIR or
$GEORECON_CACHE/md17); MD17 and MD22 (no published splits) become ``<dataset>_<mol>_all.npz``, used
with ``--config.data.train_file=...`` (950/50 drawn from it, the remaining frames are the test set).
No network is needed afterwards.

Sources (public, as of 2024):
  rMD17   figshare article 12672038 (Christensen & von Lilienfeld 2020, CC0), one tar.bz2 with
          npz_data/rmd17_<mol>.npz (100,000 frames) and splits/index_{train,test}_0{1..5}.csv
  MD17    http://www.quantum-machine.org/gdml/data/npz/md17_<mol>.npz (sGDML layout: z, R, E, F)
  MD22    http://www.quantum-machine.org/gdml/repo/datasets/md22_<mol>.npz (sGDML layout)
Units: all three ship kcal/mol and kcal/mol/Å (checked on conversion: forces of a real molecule
are tens of kcal/mol/Å; an eV-valued file would be ~23x smaller and is flagged).
"""

from __future__ import annotations

import json
import os
import sys
import tarfile

import numpy as np

from absl import app, flags

from data_prep import fetch

FLAGS = flags.FLAGS
flags.DEFINE_enum("dataset", "rmd17", ["rmd17", "md17", "md22"], "Which data set.")
flags.DEFINE_string(
    "out", None, "Output folder (default $GEORECON_CACHE/md17 or ~/.cache/georecon_jax/md17)."
)
flags.DEFINE_list("molecules", None, "Molecules to convert (default: all of the data set).")
flags.DEFINE_string("expect_sha256", None, "Verify the (single) downloaded archive against this SHA-256.")
flags.DEFINE_integer("split", 1, "rMD17 split index 1..5 (the 1000/1000 train/test index files).")

RMD17_URL = "https://figshare.com/ndownloader/files/23950376"
RMD17_MOLECULES = (
    "aspirin",
    "azobenzene",
    "benzene",
    "ethanol",
    "malonaldehyde",
    "naphthalene",
    "paracetamol",
    "salicylic",
    "toluene",
    "uracil",
)
MD17_URL = "http://www.quantum-machine.org/gdml/data/npz/md17_{mol}.npz"
MD17_MOLECULES = (
    "aspirin",
    "benzene2017",
    "ethanol",
    "malonaldehyde",
    "naphthalene",
    "salicylic",
    "toluene",
    "uracil",
)
MD22_URL = "http://www.quantum-machine.org/gdml/repo/datasets/md22_{mol}.npz"
MD22_MOLECULES = (
    "Ac-Ala3-NHMe",
    "DHA",
    "stachyose",
    "AT-AT",
    "AT-AT-CG-CG",
    "buckyball-catcher",
    "double-walled_nanotube",
)

# Pinned digests ({file name: (algorithm, hex digest)}), verified after every download. None is
# pinned yet: this script was written without network access, and no digest is published with the
# archives that could be checked here (figshare shows an MD5 on the rMD17 article page; the
# load-atoms project pins a 12-character hash prefix "cddeea2ec2c4" for rmd17.tar.bz2, algorithm
# not checked). Until a value is pinned, the measured SHA-256 is printed and written to the
# manifest, and --expect_sha256 verifies a digest obtained elsewhere.
CHECKSUMS = {}


def default_out() -> str:
    cache = os.environ.get("GEORECON_CACHE", os.path.join(os.path.expanduser("~"), ".cache", "georecon_jax"))
    return os.path.join(cache, "md17")


def download(url: str, path: str, expect_sha256=None) -> str:
    """`data_prep.fetch.download` with the digest pinned in ``CHECKSUMS`` or ``expect_sha256``."""
    name = os.path.basename(path)
    known = CHECKSUMS.get(name) or (("sha256", expect_sha256.lower()) if expect_sha256 else None)
    return fetch.download(url, path, known, pin_hint="pin it in data_prep/md17.py CHECKSUMS")


def _write(path, z, R, E, F):
    tmp = path + ".tmp.npz"
    np.savez(
        tmp,
        nuclear_charges=np.asarray(z, np.uint8),
        coords=np.asarray(R, np.float64),
        energies=np.asarray(E, np.float64).reshape(-1),
        forces=np.asarray(F, np.float64),
    )
    os.replace(tmp, path)


def _check_units(name, forces):
    rms = float(np.sqrt(np.mean(np.asarray(forces) ** 2)))
    if rms < 3.0:
        print(
            f"WARNING {name}: force RMS {rms:.3g} is small for kcal/mol/Å; are these eV/Å?", file=sys.stderr
        )
    return rms


def _verify(path):
    """Reads a written file back through the training loader (strict: no frame may be bad)."""
    from georecon_jax.data.md17 import read_force_file

    frames, _ = read_force_file(path, strict=True)
    return len(frames)


def convert_rmd17(archive: str, out: str, molecules, split: int):
    entries = []
    with tarfile.open(archive, "r:bz2") as tar:
        members = {os.path.basename(m.name): m for m in tar.getmembers() if m.isfile()}
        for mol in molecules:
            data_name = f"rmd17_{mol}.npz"
            if data_name not in members:
                raise FileNotFoundError(f"{archive}: no {data_name} (has {sorted(members)[:12]} ...)")
            with tar.extractfile(members[data_name]) as f:
                d = dict(np.load(f))
            idx = {}
            for part in ("train", "test"):
                csv = f"index_{part}_0{split}.csv"
                with tar.extractfile(members[csv]) as f:
                    idx[part] = np.loadtxt(f, dtype=np.int64).reshape(-1)
            rms = _check_units(data_name, d["forces"])
            for part, rows in idx.items():
                path = os.path.join(out, f"rmd17_{mol}_{part}_0{split}.npz")
                _write(path, d["nuclear_charges"], d["coords"][rows], d["energies"][rows], d["forces"][rows])
                entries.append(
                    {
                        "file": os.path.basename(path),
                        "frames": _verify(path),
                        "source": f"{os.path.basename(archive)}:{data_name} rows of {csv}",
                        "force_rms_kcal_mol_A": rms,
                    }
                )
    return entries


def convert_sgdml(path: str, out: str, prefix: str, mol: str):
    with np.load(path) as d:
        missing = [k for k in ("z", "R", "E", "F") if k not in d.files]
        if missing:
            raise KeyError(f"{path}: missing key(s) {missing}")
        z, R, E, F = d["z"], d["R"], d["E"], d["F"]
    rms = _check_units(os.path.basename(path), F)
    target = os.path.join(out, f"{prefix}_{mol}_all.npz")
    _write(target, z, R, E, F)
    return [
        {
            "file": os.path.basename(target),
            "frames": _verify(target),
            "source": os.path.basename(path),
            "force_rms_kcal_mol_A": rms,
        }
    ]


def main(argv):
    del argv
    out = FLAGS.out or default_out()
    os.makedirs(out, exist_ok=True)
    manifest = {
        "dataset": FLAGS.dataset,
        "units": {"energy": "kcal/mol", "force": "kcal/mol/Å", "length": "Å"},
        "files": [],
    }
    if FLAGS.dataset == "rmd17":
        mols = FLAGS.molecules or RMD17_MOLECULES
        archive = os.path.join(out, "downloads", "rmd17.tar.bz2")
        manifest["archive"] = {
            "url": RMD17_URL,
            "checksum": download(RMD17_URL, archive, FLAGS.expect_sha256),
        }
        manifest["files"] = convert_rmd17(archive, out, mols, FLAGS.split)
    else:
        url, known = (MD17_URL, MD17_MOLECULES) if FLAGS.dataset == "md17" else (MD22_URL, MD22_MOLECULES)
        mols = FLAGS.molecules or known
        manifest["archives"] = []
        for mol in mols:
            src = os.path.join(out, "downloads", f"{FLAGS.dataset}_{mol}.npz")
            checksum = download(url.format(mol=mol), src, FLAGS.expect_sha256 if len(mols) == 1 else None)
            manifest["archives"].append({"url": url.format(mol=mol), "checksum": checksum})
            manifest["files"] += convert_sgdml(src, out, FLAGS.dataset, mol)
    with open(os.path.join(out, f"manifest_{FLAGS.dataset}.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    for e in manifest["files"]:
        print(f"{e['file']}: {e['frames']} frames")
    print(f"wrote {len(manifest['files'])} files into {out}")


if __name__ == "__main__":
    app.run(main)
