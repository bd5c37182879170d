"""The 3DMRL study (issue 16): does 3DMRL pretraining of the 2D relational model help on pair tasks,
against the same model trained from scratch, and does it matter that the force head is frozen?

  python -m experiments.study --config=experiments/configs/study_mrl.py:cpu   --workdir=runs/study_mrl
  python -m experiments.study --config=experiments/configs/study_mrl.py:paper --workdir=runs/study_mrl_paper
  python -m experiments.study --config=experiments/configs/study_mrl.py:tiny  --workdir=/tmp/s  (tests)

The same command, flags and cell rules as the GeoRecon study (experiments/study.py); the cells:

  pretrain/<group>/<arm>/seed<k>       experiments.pretrain with mrl3d.py at the preset's size and the
                                       group's variant (solvation: CombiSolv; chromophore:
                                       +chromophore; ddi: +ddi), config.seed=k; at paper size the
                                       reference's combinations, at the quick size observed pairs
  finetune/<task>/<arm>/seed<k>        experiments.finetune_pairs with mrl_finetune.py (the reference
                                       recipe by task), config.seed=k: 5-fold CV of split seed k
                                       (regression), or the molecule / scaffold split of seed k
                                       (DDI; ``ddi_repeats`` split seeds per cell), from the group's
                                       pretraining of seed k, or from scratch

Arms: scratch; 3dmrl (the reference: the force head frozen at its initialisation); and
3dmrl_trained_force (the ablation: the force head trained with the encoders).

  cpu    FreeSolv and Abraham, 5 seeds: quick 3DMRL model (3 SchNet interactions), 100
         pretraining steps of 16 observed pairs (not combinations) per seed; a 32-feature
         relational model fine-tuned to the reference's early stopping (patience 50, at most 500
         epochs) on fold 0 of each seed's CV (at most 800 pairs); about 3 hours on 2 CPU cores
         (docs/results.md)
  paper  the reference: 100 pretraining epochs, ≤ 500 fine-tuning epochs with early stopping, all
         pairs, 5-fold CV × 3 seeds, 5 DDI repeats (not run here)
"""

import ml_collections

ARMS = {
    "scratch": None,  # no pretraining
    "3dmrl": (),  # the reference's optimizer: force head frozen
    "3dmrl_trained_force": ("--config.objective.train_force_head=True",),
}
# task -> (the pretraining group it starts from, the fine-tuning preset, the split)
TASKS = {
    "freesolv": ("solvation", "freesolv", "cv"),
    "abraham": ("solvation", "abraham", "cv"),
    "compsol": ("solvation", "compsol", "cv"),
    "absorption": ("chromophore", "absorption", "cv"),
    "emission": ("chromophore", "emission", "cv"),
    "chchminer_molecule": ("ddi", "chchminer", "molecule"),
    "chchminer_scaffold": ("ddi", "chchminer", "scaffold"),
}
# the fine-tuning config variant of each pretraining group (its 2D model must be the pretraining's)
FINETUNE_VARIANTS = {"solvation": "", "chromophore": "", "ddi": "+ddi"}
GROUPS = {"solvation": "", "chromophore": "+chromophore", "ddi": "+ddi"}  # mrl3d.py variants

PRESETS = dict(
    tiny=dict(
        pretrain_size="tiny",
        finetune_size="tiny",
        seeds=(0, 1),
        arms=("scratch", "3dmrl"),
        tasks=("freesolv",),
        pretrain_steps=4,
        num_epochs=2,
        early_stopping=0,
        max_pairs=None,
        num_folds=2,
        max_folds=1,
    ),
    # What 2 CPU cores answer in about 3 hours (README: measured): the solvation tasks the paper
    # leads with, FreeSolv (every pair) and Abraham (a random 800), 5 seeds × fold 0 of each seed's
    # 5-fold CV = 5 replicates per arm, fine-tuned to the reference's early stopping (at most 500
    # epochs, patience 50: at 150 / 20 Abraham's best epoch was 129-150, the cap, not convergence;
    # those cells' records are kept in results/study_mrl_cpu_150ep);
    # each seed its own 3DMRL pretraining (100 steps of 16 observed pairs: short, said plainly).
    cpu=dict(
        pretrain_size="quick",
        finetune_size="",
        seeds=(0, 1, 2, 3, 4),
        tasks=("freesolv", "abraham"),
        # the 2D model at 32 features (the reference: 56); pretraining environments of 96 atom
        # slots (pairs whose K = 5 copies do not fit get fewer, counted as copies_cut) and molecules
        # of at most 48 atoms; fine-tuning molecules of at most 64 atoms (training pairs only: no
        # test pair is dropped)
        pretrain_overrides=(
            "--config.model.relational.features=32",
            "--config.environment.max_atoms=96",
            "--config.data.max_atoms=48",
        ),
        finetune_overrides=("--config.model.features=32", "--config.data.max_atoms=64"),
        group_overrides=dict(chromophore=("--config.data.limit=1500",)),
        pretrain_steps=100,
        num_epochs=500,
        early_stopping=50,
        max_pairs=800,
        ddi_max_pairs=4000,
        max_folds=1,
        records="results/study_mrl_cpu/cells",
    ),
    paper=dict(
        pretrain_size="",
        finetune_size="",
        pretrain_steps=None,  # mrl3d.py's 100 epochs
        num_epochs=500,
        early_stopping=50,
        max_pairs=None,
        ddi_repeats=5,
    ),
)


def get_config(preset="cpu"):
    if preset not in PRESETS:
        raise ValueError(f"unknown 3DMRL study preset {preset!r}: use one of {', '.join(PRESETS)}")
    c = ml_collections.ConfigDict()
    c.study = "3dmrl"  # experiments.study dispatches on this
    c.preset = preset
    c.pretrain_size = ""  # mrl3d.py's size ('' = paper scale)
    c.finetune_size = ""  # mrl_finetune.py's size
    c.pretrain_overrides = ()  # extra --config.* flags for every pretraining cell
    c.finetune_overrides = ()  # and for every fine-tuning cell
    c.group_overrides = ml_collections.ConfigDict()  # group -> extra flags for its pretraining cells
    c.seeds = (0, 1, 2)
    c.arms = tuple(ARMS)
    c.tasks = tuple(TASKS)
    c.pretrain_steps = ml_collections.FieldReference(None, field_type=int)  # None: the config's
    c.num_epochs = 500  # fine-tuning epochs (at most, with early stopping)
    c.early_stopping = 50  # the reference's --es (0: off)
    c.max_pairs = ml_collections.FieldReference(None, field_type=int)  # None: every pair
    c.ddi_max_pairs = ml_collections.FieldReference(None, field_type=int)  # None: max_pairs
    c.num_folds = 5
    c.max_folds = 0  # 0: every fold of the cell's seed
    c.ddi_repeats = 1  # DDI split seeds per cell (seed k: split seeds k, k + S, k + 2S, ...)
    c.interval = 0.95
    # finished cells' small files are copied here as they finish ('' = off): georecon_jax/studies/cells.py
    c.records = ""
    for k, v in PRESETS[preset].items():
        c[k] = ml_collections.ConfigDict(v) if k == "group_overrides" else v
    return c
