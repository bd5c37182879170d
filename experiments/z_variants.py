"""Does the decoder use the graph code? GeoRecon's objective variants side by side.

  python -m experiments.z_variants --workdir=runs/z_variants --size=quick
  python -m experiments.z_variants --workdir=runs/z_variants --size=quick --finetune_steps=400

For each variant of ``experiments/configs/georecon.py`` (``caption``, the paper's, and each name
of ``VARIANTS``) it pretrains ``georecon.py:SIZE+VARIANT`` into WORKDIR/VARIANT, optionally
fine-tunes one QM9 target from it (``finetune_qm9.py:quick``, the labels and test molecules of
``experiments/compare_quick.sh``), and writes the table of the z diagnostic to OUT/SIZE.md, the raw
numbers to OUT/SIZE.json and the ratios by σ to OUT/SIZE.png (georecon_jax/studies/zvariants.py).
Every step resumes: a finished workdir is not redone, an interrupted one continues from its
checkpoint.
"""

from __future__ import annotations

import dataclasses
import sys

from absl import app, flags

from experiments.configs import georecon
from georecon_jax.studies import zvariants

flags.DEFINE_string("workdir", "runs/z_variants", "Where the runs go (one folder per variant).")
flags.DEFINE_string("size", "quick", "A size of georecon.py (quick, tiny, ...).")
flags.DEFINE_list(
    "variants", ["caption", *georecon.VARIANTS], "Variants: 'caption' and names of georecon.VARIANTS."
)
flags.DEFINE_integer("finetune_steps", 0, "QM9 fine-tuning steps from each variant (0: none).")
flags.DEFINE_string("target", "homo", "QM9 target of the fine-tuning.")
flags.DEFINE_string(
    "molecule",
    "",
    "Fine-tune on this rMD17 molecule (energies and forces, finetune_md17.py:quick) instead of a "
    "QM9 target. The pretrainings then use the MD17 recipe's encoder (no vector norm: "
    "model.encoder.vec_norm=none), so give them their own --workdir.",
)
flags.DEFINE_string("md17_dir", "../shared/data/rmd17", "Folder of the rMD17 .npz files.")
flags.DEFINE_string("out", "results/z_variants", "Where the table, raw numbers and plot go.")
flags.DEFINE_list("extra", [], "More --config overrides for every pretraining (a=b,...).")
flags.DEFINE_bool(
    "refresh_report",
    False,
    "Re-run the end-of-run report (z diagnostic) of finished pretrainings with the current code "
    "(the pretraining command on a finished workdir trains nothing and reports again); a report "
    "without the current diagnostic's fields is re-run anyway.",
)
FLAGS = flags.FLAGS


def main(argv):
    del argv
    unknown = [v for v in FLAGS.variants if v != "caption" and v not in georecon.VARIANTS]
    if unknown:
        raise app.UsageError(f"unknown variants {unknown}: use caption or {', '.join(georecon.VARIANTS)}")
    options = zvariants.Options(
        **{f.name: FLAGS[f.name].value for f in dataclasses.fields(zvariants.Options)}
    )
    zvariants.run(options, "python -m experiments.z_variants " + " ".join(sys.argv[1:]))


if __name__ == "__main__":
    app.run(main)
