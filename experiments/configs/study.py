"""The GeoRecon study (issue 15): which pretraining gives better fine-tuned QM9 orbital energies and
rMD17 energies and forces: GeoRecon, Coord (node-level denoising) or none, and which GeoRecon
settings matter.

  python -m experiments.study --config=experiments/configs/study.py:cpu   --workdir=runs/study
  python -m experiments.study --config=experiments/configs/study.py:gpu   --workdir=runs/study_gpu
  python -m experiments.study --config=experiments/configs/study.py:paper --workdir=runs/study_paper
  python -m experiments.study --config=experiments/configs/study.py:tiny  --workdir=/tmp/s  (tests)

Every cell runs a single command of this codebase with the configs those commands use
(georecon.py, coord.py, finetune_qm9.py, finetune_md17.py at the preset's ``size``); the study only
sweeps seeds and arms and sets step counts. The presets differ only in sizes and step counts:

  cpu    quick model (3 x 64), 200 pretraining steps of 32 molecules, 200 fine-tuning steps;
         about 1.5 hours on 2 CPU cores (measured: README)
  gpu    quick model widened to 6 x 128, 20k pretraining and 20k/5k fine-tuning steps; about a
         day on one accelerator (not run here)
  paper  8 x 256 (the configs' paper scale), the paper's step counts (200k pretraining, 300k QM9
         and up to 3,000 MD17 epochs' worth of steps); data-parallel over every device
"""

import ml_collections

# Arms: a name -> (pretraining config file or None for scratch, its '+'-overlays). The GeoRecon
# ablations are georecon.py's ABLATIONS (one setting of the caption's objective changed each).
ARMS = {
    "scratch": (None, ()),
    "coord": ("coord.py", ()),
    "georecon": ("georecon.py", ()),
    "georecon_sigma_small": ("georecon.py", ("sigma_small",)),
    "georecon_sigma_large": ("georecon.py", ("sigma_large",)),
    "georecon_fixed_schedule": ("georecon.py", ("fixed_schedule",)),
    "georecon_deep_decoder": ("georecon.py", ("deep_decoder",)),
    "georecon_noisy_code": ("georecon.py", ("noisy_code",)),
    "georecon_narrow_code": ("georecon.py", ("narrow_code",)),
}
MAIN_ARMS = ("scratch", "coord", "georecon")

PRESETS = dict(
    tiny=dict(
        size="tiny",
        seeds=(0, 1),
        arms=("scratch", "georecon"),
        qm9_targets=("homo",),
        md17_molecule="",
        ablation_tasks=(),
        pretrain_steps=4,
        finetune_steps=4,
        md17_finetune_steps=4,
        qm9_labels=None,  # the tiny config's own (limit=400)
        qm9_test_molecules=16,
        bootstrap=200,
    ),
    cpu=dict(
        size="quick",
        pretrain_steps=200,
        finetune_steps=200,
        md17_finetune_steps=200,
        qm9_labels=10_000,
        qm9_test_molecules=1000,
        num_recon_molecules=32,
        num_sampling_steps=20,
    ),
    gpu=dict(
        size="quick",
        encoder=dict(num_layers=6, features=128, num_rbf=32),
        pretrain_steps=20_000,
        pretrain_batch=64,
        finetune_steps=20_000,
        md17_finetune_steps=5_000,
        qm9_labels=None,
        qm9_test_molecules=None,
        num_recon_molecules=256,
        ablation_tasks=("homo", "lumo", "gap"),
    ),
    paper=dict(
        size="",
        pretrain_steps=200_000,
        finetune_steps=300_000,
        md17_finetune_steps=3000 * 119,  # 3,000 epochs of 950 frames in batches of 8
        qm9_labels=None,
        qm9_test_molecules=None,
        num_recon_molecules=256,
        ablation_tasks=("homo", "lumo", "gap"),
    ),
)


def get_config(preset="cpu"):
    if preset not in PRESETS:
        raise ValueError(f"unknown study preset {preset!r}: use one of {', '.join(PRESETS)}")
    c = ml_collections.ConfigDict()
    c.preset = preset
    c.size = ""  # the size of the single-command configs every cell uses ('' = paper scale)
    c.seeds = (0, 1, 2)
    c.arms = tuple(ARMS)
    c.qm9_targets = ("homo", "lumo", "gap")
    c.md17_molecule = "aspirin"  # rMD17 energies and forces; '' skips
    c.md17_dir = "../shared/data/rmd17"
    # the tasks the ablation arms are fine-tuned on (every GeoRecon pretraining also reports its z
    # diagnostic); the main arms (scratch, coord, georecon) are fine-tuned on every task
    c.ablation_tasks = ("homo",)
    c.pretrain_steps = 200
    c.pretrain_batch = ml_collections.FieldReference(None, field_type=int)  # None: the config's
    c.finetune_steps = 200
    c.md17_finetune_steps = 200
    c.qm9_labels = ml_collections.FieldReference(None, field_type=int)  # None: all 110k
    c.qm9_test_molecules = ml_collections.FieldReference(None, field_type=int)  # None: all
    # GeoRecon's end-of-run report (reconstruction from z and the z diagnostic) on this many
    # held-out molecules, with this many sampling steps
    c.num_recon_molecules = 64
    c.num_sampling_steps = 30
    c.encoder = ml_collections.ConfigDict()  # encoder overrides on top of the size's (gpu)
    c.bootstrap = 2000  # resamples of seeds and test molecules for the intervals
    c.interval = 0.95
    for k, v in PRESETS[preset].items():
        c[k] = ml_collections.ConfigDict(v) if k == "encoder" else v
    return c
