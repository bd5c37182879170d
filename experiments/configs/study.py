"""The GeoRecon study: which pretraining gives better fine-tuned QM9 orbital energies and rMD17
energies and forces, GeoRecon, Coord (node-level denoising), Coord over GeoRecon's σ ladder, or
none; and which GeoRecon settings matter.

  python -m experiments.study --config=experiments/configs/study.py:cpu   --workdir=runs/study
  python -m experiments.study --config=experiments/configs/study.py:gpu   --workdir=runs/study_gpu
  python -m experiments.study --config=experiments/configs/study.py:paper --workdir=runs/study_paper
  python -m experiments.study --config=experiments/configs/study.py:tiny  --workdir=/tmp/s  (tests)

Every cell runs one command of this codebase with the configs those commands use (georecon.py,
coord.py, coord_ladder.py, finetune_qm9.py, finetune_md17.py at the preset's ``size``); the study
sweeps seeds and arms and sets step counts, label counts and early stopping.

The main comparison (``MAIN_ARMS``) has no confound by construction:
  - every arm is fine-tuned with the same recipe, including the same denoising regulariser target,
    ``loss.denoise_normaliser='sigma'`` (the regulariser predicts ε = noise / σ in every arm). The
    reference's per-pretraining normaliser (GeoRecon's pretraining statistics make its target
    ~100x smaller than scratch's: almost no regulariser) is the ablation arm
    ``georecon_pretraining_normaliser`` (and ``coord_pretraining_normaliser``);
  - ``coord_ladder`` (node-level denoising over GeoRecon's σ range, no graph code) separates what
    the graph code adds from what multi-σ denoising adds;
  - ``scratch_compute_matched`` spends GeoRecon's pretraining time on supervised steps (its step
    budget is the fine-tuning budget plus ``compute_matched_extra_steps``).

Seeds: fine-tuning seed k of a pretrained arm starts from pretraining seed
``pretrain_seeds[k mod P]``; the intervals are then over the P pretrainings (the seeds of one
pretraining are averaged first: georecon_jax/studies/stats.py).
"""

import ml_collections

# Arms: name -> what it pretrains (config file, '+' overlays), which arm's pretraining cells it
# reuses (fine-tuning-only ablations), and extra fine-tuning flags.
ARMS = {
    "scratch": dict(),
    "scratch_compute_matched": dict(compute_matched=True),
    "coord": dict(pretrain="coord.py"),
    "coord_ladder": dict(pretrain="coord_ladder.py"),
    "georecon": dict(pretrain="georecon.py"),
    # ablations: the reference's per-pretraining regulariser normaliser (fine-tuning only)
    "georecon_pretraining_normaliser": dict(
        pretrain="georecon.py", reuse="georecon", normaliser="pretraining"
    ),
    "coord_pretraining_normaliser": dict(pretrain="coord.py", reuse="coord", normaliser="pretraining"),
    # ablations of GeoRecon's objective (georecon.py ABLATIONS: one setting changed each)
    "georecon_sigma_small": dict(pretrain="georecon.py", overlays=("sigma_small",)),
    "georecon_sigma_large": dict(pretrain="georecon.py", overlays=("sigma_large",)),
    "georecon_fixed_schedule": dict(pretrain="georecon.py", overlays=("fixed_schedule",)),
    "georecon_deep_decoder": dict(pretrain="georecon.py", overlays=("deep_decoder",)),
    "georecon_noisy_code": dict(pretrain="georecon.py", overlays=("noisy_code",)),
    "georecon_narrow_code": dict(pretrain="georecon.py", overlays=("narrow_code",)),
}
# The `recipe` preset (no pretraining): the QM9 fine-tuning recipe of 2026-12-03 (the reference's,
# finetune_qm9.py) against the one before it, one factor at a time; `scratch` is the current recipe.
RECIPE_FACTORS = {
    "vec_norm_none": ("--config.model.encoder.vec_norm=none",),  # was: no vector norm
    "vec_norm_whitened_reference": ("--config.model.encoder.vec_norm=whitened_reference",),
    "l1": ("--config.loss.name=l1",),  # was: L1
    "mlp_head": ("--config.model.head.kind=mlp",),  # was: an MLP on the scalars
    "no_regulariser": ("--config.loss.denoise_weight=0.0",),
    "scaled_embedding": ("--config.model.encoder.embedding_init=scaled",),  # was: N(0, 1/F)
}
ARMS.update({f"recipe_{k}": dict(finetune=v) for k, v in RECIPE_FACTORS.items()})
# the recipe before 2026-12-03 at the quick size: every factor it differed in (the regulariser it
# had too), gradient clipping at 10 included
ARMS["recipe_old"] = dict(
    finetune=RECIPE_FACTORS["vec_norm_none"]
    + RECIPE_FACTORS["l1"]
    + RECIPE_FACTORS["mlp_head"]
    + RECIPE_FACTORS["scaled_embedding"]
    + ("--config.optim.grad_clip=10.0",)
)
# is the whitened norm's cost a matter of training length? both norms at 3x the steps
ARMS["recipe_long"] = dict(extra_steps=3000)
ARMS["recipe_long_vec_norm_none"] = dict(
    extra_steps=3000, finetune=RECIPE_FACTORS["vec_norm_none"], compare="recipe_long"
)
# not a factor of the old recipe: the current recipe with the head's last layer at zero
# (`model.head.zero_init`): does the whitened norm cost HOMO through the Xavier head's initial
# output, a loss ~600x the target variance at step 0 (docs/results.md)? Compared with the arm
# without the norm too: if the start is the whole cost, no difference between the two.
ARMS["recipe_head_zero_init"] = dict(
    finetune=("--config.model.head.zero_init=True",), compare="recipe_vec_norm_none"
)
# ... and at 4,500 steps: does the zero head keep up with the norm-free model there too?
ARMS["recipe_long_head_zero_init"] = dict(
    extra_steps=3000,
    finetune=("--config.model.head.zero_init=True",),
    compare=("recipe_long", "recipe_long_vec_norm_none"),
)
# fine-tuned on every task with every seed
MAIN_ARMS = ("scratch", "coord", "coord_ladder", "georecon")
# fine-tuned on every task with the ablation seeds (the compute-matched control)
EVERY_TASK_ARMS = MAIN_ARMS + ("scratch_compute_matched",)

PRESETS = dict(
    tiny=dict(
        size="tiny",
        seeds=(0, 1, 2),
        pretrain_seeds=(0, 1),
        ablation_seeds=(0,),
        arms=("scratch", "georecon", "georecon_pretraining_normaliser"),
        qm9_targets=("homo",),
        md17_molecule="",
        ablation_tasks=("homo",),
        pretrain_steps=4,
        finetune_steps=4,
        md17_finetune_steps=4,
        eval_every=2,
        compute_matched_extra_steps=2,
        qm9_labels=None,  # the tiny config's own (limit=400)
        qm9_test_molecules=16,
        vec_norm="none",
    ),
    # What 2 CPU cores can answer in about 6 hours: label-scarce fine-tuning (1,000 QM9 labels,
    # 200 aspirin frames) to early stopping, from pretrainings long enough for the quick model's
    # loss to flatten (docs/results.md: the curve and the criterion).
    cpu=dict(
        size="quick",
        seeds=(0, 1, 2, 3, 4),
        pretrain_seeds=(0, 1, 2),
        ablation_seeds=(0, 1, 2),
        qm9_targets=("homo", "gap"),
        ablation_tasks=("homo",),
        arms=EVERY_TASK_ARMS + ("georecon_pretraining_normaliser", "coord_pretraining_normaliser"),
        pretrain_steps=2000,
        finetune_steps=1200,
        md17_finetune_steps=1200,
        eval_every=100,
        patience=4,  # evaluations without improvement of the validation MAE
        # GeoRecon's 2,000 pretraining steps at 3.1 steps/s (645 s) are ~3,300 fine-tuning steps
        # at 5.1 steps/s (RATES below)
        compute_matched_extra_steps=3300,
        qm9_labels=1000,
        qm9_eval_molecules=500,
        qm9_test_molecules=1000,
        md17_train_frames=200,
        md17_val_frames=50,
        md17_test_frames=500,
        num_recon_molecules=32,
        num_sampling_steps=20,
        vec_norm="none",
        records="results/study_cpu/cells",
    ),
    # Issue 32 item 6: why the reference recipe made HOMO worse at 1,500 steps (docs/results.md):
    # the README's single run (finetune_qm9.py:quick, 10,000 labels, 1,500 steps, the first 2,000
    # test molecules) from scratch, one factor changed per arm, 3 seeds each; both vector norms at
    # 4,500 steps; the current recipe with a zero-initialised head, at 1,500 and 4,500 steps. At most
    # 5 hours on 2 CPU cores.
    recipe=dict(
        title="QM9 HOMO fine-tuning recipe, one factor at a time",
        size="quick",
        seeds=(0, 1, 2),
        ablation_seeds=(0, 1, 2),
        arms=("scratch", *(f"recipe_{k}" for k in RECIPE_FACTORS), "recipe_old")
        + ("recipe_long", "recipe_long_vec_norm_none", "recipe_head_zero_init")
        + ("recipe_long_head_zero_init",),
        qm9_targets=("homo",),
        ablation_tasks=("homo",),
        md17_molecule="",
        finetune_steps=1500,
        eval_every=0,  # the quick config's 250
        patience=0,  # no early stopping: the README's run
        records="results/study_recipe/cells",
    ),
    gpu=dict(
        size="quick",
        encoder=dict(num_layers=6, features=128, num_rbf=32),
        pretrain_steps=20_000,
        pretrain_batch=64,
        finetune_steps=20_000,
        md17_finetune_steps=5_000,
        eval_every=500,
        patience=10,
        compute_matched_extra_steps=20_000,
        qm9_labels=110_000,  # every training label (the quick config's own is 10,000)
        qm9_eval_molecules=10_000,
        qm9_test_molecules=0,  # 0: the whole test split
        num_recon_molecules=256,
        ablation_tasks=("homo", "lumo", "gap"),
        # as the cpu preset: the recipe preset found the whitened norm with the Xavier head costs
        # 68.5 meV [36, 101] of HOMO even at 4,500 steps; the paper preset keeps the reference's
        # whitened norm (trained there for 3,000 epochs)
        vec_norm="none",
    ),
    paper=dict(
        size="",
        pretrain_steps=200_000,
        finetune_steps=300_000,
        md17_finetune_steps=3000 * 119,  # 3,000 epochs of 950 frames in batches of 8
        eval_every=0,  # the configs' own
        compute_matched_extra_steps=200_000,
        qm9_labels=None,
        qm9_test_molecules=0,
        num_recon_molecules=256,
        ablation_tasks=("homo", "lumo", "gap"),
    ),
)


def get_config(preset="cpu"):
    if preset not in PRESETS:
        raise ValueError(f"unknown study preset {preset!r}: use one of {', '.join(PRESETS)}")
    c = ml_collections.ConfigDict()
    c.preset = preset
    c.title = "GeoRecon study"  # the report's title
    c.size = ""  # the size of the single-command configs every cell uses ('' = paper scale)
    c.seeds = (0, 1, 2)  # fine-tuning seeds of the main arms
    c.pretrain_seeds = (0, 1, 2)  # pretraining seeds (fine-tuning seed k uses pretrain_seeds[k % P])
    c.ablation_seeds = (0, 1, 2)  # fine-tuning seeds of the other arms
    c.arms = tuple(a for a in ARMS if not a.startswith("recipe_"))  # the recipe preset's are its own
    c.qm9_targets = ("homo", "lumo", "gap")
    c.md17_molecule = "aspirin"  # rMD17 energies and forces; '' skips
    c.md17_dir = "../shared/data/rmd17"
    # the tasks the ablation arms are fine-tuned on (every GeoRecon pretraining also reports its z
    # diagnostic); the main arms are fine-tuned on every task
    c.ablation_tasks = ("homo",)
    c.pretrain_steps = 200
    c.pretrain_batch = ml_collections.FieldReference(None, field_type=int)  # None: the config's
    c.finetune_steps = 200  # at most (early stopping may end a cell sooner)
    c.md17_finetune_steps = 200
    c.eval_every = 0  # fine-tuning evaluation interval in steps (0: the configs')
    c.patience = 0  # early stopping after this many evaluations without improvement (0: off)
    # the regulariser's target scale in every main arm ('sigma': ε in every arm; 'pretraining':
    # the reference's per-pretraining normaliser, a confound between arms)
    c.denoise_normaliser = "sigma"
    c.compute_matched_extra_steps = 0  # scratch_compute_matched: fine-tuning steps + this many
    c.qm9_labels = ml_collections.FieldReference(None, field_type=int)  # None: the config's
    c.qm9_eval_molecules = ml_collections.FieldReference(None, field_type=int)  # None: the config's
    c.qm9_test_molecules = ml_collections.FieldReference(None, field_type=int)  # None: the config's; 0: all
    c.md17_train_frames = ml_collections.FieldReference(None, field_type=int)  # None: the config's
    c.md17_val_frames = ml_collections.FieldReference(None, field_type=int)
    c.md17_test_frames = ml_collections.FieldReference(None, field_type=int)  # None: all
    # the encoder's vector norm in every cell (None: each config's own, and a separate MD17
    # pretraining without it); one value lets one pretraining serve QM9 and MD17
    c.vec_norm = ml_collections.FieldReference(None, field_type=str)
    # GeoRecon's end-of-run report (reconstruction from z and the z diagnostic) on this many
    # held-out molecules, with this many sampling steps
    c.num_recon_molecules = 64
    c.num_sampling_steps = 30
    c.encoder = ml_collections.ConfigDict()  # encoder overrides on top of the size's (gpu)
    c.interval = 0.95  # t-intervals over seeds
    # finished cells' small files are copied here as they finish (commit them); a record here
    # counts as a finished cell ('' = off; relative to the folder the study runs in)
    c.records = ""
    # measured step rates for --list's time estimate (steps/s on the machine the numbers name)
    c.rates = ml_collections.ConfigDict(RATES.get(preset, {}))
    for k, v in PRESETS[preset].items():
        c[k] = ml_collections.ConfigDict(v) if k == "encoder" else v
    return c


# Measured step rates (steps/s) behind `--list`'s expected times, and a per-cell overhead (start,
# compilation, test-set evaluation) in seconds.
_CPU_RATES = dict(
    kind="measured",  # whole runs, evaluations included: --list gives an upper bound
    machine="2 CPU cores",
    source="quick-size runs alone on this 2-core machine, 2026-12-04 and 2026-12-06: docs/results.md",
    pretrain_georecon=3.1,  # 600 steps in 196 s (the quick start, docs/results.md)
    pretrain_coord=5.0,
    pretrain_coord_ladder=5.0,
    finetune_qm9=5.1,  # 1,500 HOMO steps in 292 s
    finetune_md17=6.0,  # 600 aspirin steps in ~100 s
    cell_overhead_s=60.0,
)

# One NVIDIA H200 (benchmarks/results/throughput_gpu.md, 2026-12-04): molecules/s of a training
# step (forward, backward, AdamW) at the benchmark's cpu size (4 x 128 ET, 32 RBF), batch 32, pair
# layout. The gpu and paper presets' rates are derived from them, not measured: scaled to the
# preset's encoder, batch and task as each line says; each scaling lengthens the estimate where it
# is uncertain (a bigger model or batch uses a GPU better than this assumes).
H200_MOLECULES_PER_S = dict(coord=5172.3, georecon=2424.6)
# the CPU benchmark's paper-size (8 x 256, 64 RBF) over cpu-size rate, pair layout
# (benchmarks/results/throughput_cpu.md): Coord 29.5 / 162.0, GeoRecon 13.8 / 61.1
PAPER_OVER_CPU_SIZE = dict(coord=29.5 / 162.0, georecon=13.8 / 61.1)
MD17_FORCE_COST = 3.0  # a force-trained step over an energy-only one (double backward): assumed


def _h200_rates(size_factor: dict, pretrain_batch: int, qm9_batch: int, evaluated: int) -> dict:
    """Steps/s on one H200 at a preset's size and batches; ``evaluated``: molecules a QM9
    fine-tuning cell evaluates (validation every eval_every steps, and the test split), at a
    forward pass's rate (a third of a training step's work)."""
    coord = H200_MOLECULES_PER_S["coord"] * size_factor["coord"]
    georecon = H200_MOLECULES_PER_S["georecon"] * size_factor["georecon"]
    return dict(
        kind="derived",
        machine="one NVIDIA H200",
        source="derived from benchmarks/results/throughput_gpu.md (2026-12-04) in "
        "experiments/configs/study.py, not measured at this size",
        pretrain_georecon=georecon / pretrain_batch,
        pretrain_coord=coord / pretrain_batch,
        pretrain_coord_ladder=coord / pretrain_batch,
        finetune_qm9=coord / qm9_batch,  # the encoder's step plus a head and the regulariser
        # MD17 batches of 8 take at least a batch-32 step (a GPU is latency-bound there), times
        # the force cost
        finetune_md17=coord / 32 / MD17_FORCE_COST,
        # start and compilation (13-34 s per function on the H200), then the evaluations
        cell_overhead_s=120.0 + evaluated / (3 * coord),
    )


RATES = dict(
    cpu=_CPU_RATES,
    recipe=_CPU_RATES,
    # gpu: 6 x 128 (4/6 of the benchmark's layers), pretraining batch 64, QM9 fine-tuning batch
    # 32; 40 evaluations of 10,000 molecules and the 10,831 test molecules
    gpu=_h200_rates(dict(coord=4 / 6, georecon=4 / 6), 64, 32, 40 * 10_000 + 10_831),
    # paper: 8 x 256, pretraining batch 70, QM9 fine-tuning batch 256; 300 evaluations of the
    # 10,000 validation molecules and the test split
    paper=_h200_rates(PAPER_OVER_CPU_SIZE, 70, 256, 300 * 10_000 + 10_831),
)
