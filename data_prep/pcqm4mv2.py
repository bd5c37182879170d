"""Fetch and verify PCQM4Mv2's 3D structures (OGB-LSC), for pretraining beyond QM9.

  python -m data_prep.pcqm4mv2 [--out=$GEORECON_CACHE/pcqm4mv2] [--check_records=1000]

What it does:
  1. downloads ``pcqm4m-v2-train.sdf.tar.gz`` from the OGB-LSC release into <out>
     (skipped when the file is already there; streamed to a ``.part`` file renamed when complete);
  2. verifies its MD5 against the value OGB-LSC publishes (fd72bce6...; a mismatch deletes the
     file and fails);
  3. extracts ``pcqm4m-v2-train.sdf`` (about 3.4 million DFT-optimised structures, the training split;
     hydrogens explicit, Å) and reads its first ``--check_records`` records through the loader, so
     that a damaged file shows now rather than at training time.

Then: ``python -m experiments.pretrain --config=experiments/configs/georecon.py
--config.data.dataset=sdf --config.data.sdf_path=<out>/pcqm4m-v2-train.sdf --workdir=runs/pcqm``.
The first run converts the file once, streaming, into a memory-mapped molecule store
(georecon_jax/data/store.py; resumable if interrupted; records that cannot be used are skipped
and listed in ``..._skipped.json`` beside it). Coord's published checkpoints were pretrained on this file.
No network is needed afterwards; the tests never download (they read a small SDF written from
real QM9 molecules).
"""

from __future__ import annotations

import os
import tarfile

from absl import app, flags

from data_prep.fetch import download

URL = "http://ogb-data.stanford.edu/data/lsc/pcqm4m-v2-train.sdf.tar.gz"
MD5 = "fd72bce606e7ddf36c2a832badeec6ab"  # published with the OGB-LSC PCQM4Mv2 release
SDF = "pcqm4m-v2-train.sdf"

flags.DEFINE_string("out", None, "Folder for the archive and the SDF (default $GEORECON_CACHE/pcqm4mv2).")
flags.DEFINE_integer("check_records", 1000, "Records read back through the loader after extraction.")
FLAGS = flags.FLAGS


def main(argv):
    del argv
    from georecon_jax.data.qm9 import default_cache_dir
    from georecon_jax.data.sdf import read_sdf_molecules

    out = FLAGS.out or os.path.join(default_cache_dir(), "pcqm4mv2")
    os.makedirs(out, exist_ok=True)
    archive = os.path.join(out, os.path.basename(URL))
    download(URL, archive, ("md5", MD5))
    sdf = os.path.join(out, SDF)
    if not os.path.exists(sdf):
        print(f"extracting {archive}")
        with tarfile.open(archive) as tar:
            member = next((m for m in tar.getmembers() if os.path.basename(m.name) == SDF), None)
            if member is None:
                raise SystemExit(f"{archive} holds no {SDF}")
            member.name = SDF
            tar.extract(member, out, filter="data")
    mols, report = read_sdf_molecules(sdf, limit=FLAGS.check_records)
    print(report.summary())
    print(
        f"{sdf}: ready ({len(mols)} of the first {report.total} records usable). Pretrain with\n"
        f"  --config.data.dataset=sdf --config.data.sdf_path={sdf}"
    )


if __name__ == "__main__":
    app.run(main)
