"""Fine-tuning the CIGIN relational model on pair tasks (from scratch or from a 3DMRL checkpoint).

  --config=experiments/configs/mrl_finetune.py          5-fold CV × 3 seeds (80/10/10), ≤ 500 epochs
  --config=experiments/configs/mrl_finetune.py:quick    2 CPU cores: 1 split, a few epochs
  --config=experiments/configs/mrl_finetune.py:tiny     seconds; the tests

Set the task with --config.data.preset (freesolv, abraham, compsol, combisolv, absorption, emission,
lifetime, chchminer, zhangddi) and the split with --config.split (cv | molecule | scaffold; the
DDI presets switch 'cv' to 'molecule' automatically). --config.init_from=<3DMRL workdir> starts
from pretrained 2D weights; the relational sizes must match the pretraining's (hydrogens need not:
the reference pretrains with explicit hydrogens and fine-tunes chromophores without them).
"""

from experiments.configs import common

CLASSIFICATION = ("chchminer", "zhangddi")

SIZES = common.sizes(
    quick=dict(seeds=(0,), max_splits=1, num_epochs=8, early_stopping=0, data=dict(max_atoms=64)),
    tiny=dict(
        seeds=(0,),
        num_folds=2,
        max_splits=1,
        num_epochs=2,
        early_stopping=0,
        batch_size=8,
        eval_batch_size=16,
        tensorboard=False,
        data=dict(limit=60, num_workers=1),
        model=dict(features=16, num_steps=2, head_hidden=(16,)),
        optim=dict(learning_rate=1e-3),
    ),
)


# '+' variants of any size (mrl_finetune.py:+ddi, quick+ddi)
VARIANTS = dict(
    # 3DMRL's DDI model (DDI/models_2d/CIGIN.py): one GINE encoder and one Set2Set for both drugs,
    # 300 features, a single linear predictor; the preset ChChMiner (data.preset=zhangddi works)
    ddi=dict(
        data=dict(preset="chchminer"), model=dict(architecture="reference_ddi", features=300, head_hidden=())
    ),
)


def get_config(size=None):
    """``size``: '' (paper scale) or a name of `SIZES`, optionally with '+'-separated `VARIANTS`."""
    return common.with_variants(size, _config, VARIANTS, "pair fine-tuning")


def _config(size=None):
    # Splits and epochs: one run of the experiment runner per split (georecon_jax.tasks.finetune_pairs).
    c = common.ConfigDict(dict(seed=0, num_devices=1))
    c.init_from = ""  # a 3DMRL pretraining workdir, or "" for scratch
    c.split = "cv"  # cv (regression) | molecule | scaffold (DDI)
    c.num_folds = 5
    c.seeds = (0, 1, 2)
    c.max_splits = 0  # 0: all folds × seeds
    # The reference recipe (Namkyeong/3DMRL MI/utils/argument.py, MI/scripts/downstream.sh,
    # DDI/utils/argument.py, DDI/scripts/downstream.sh): at most 500 epochs, early stopping when
    # the best validation value has not changed for early_stopping epochs (see
    # finetune_pairs.early_stopping_patience), batch and learning rate by task (None: the task's,
    # `finetune_pairs.RECIPES`: solvation 256 / 1e-3, FreeSolv and MNSol 32; chromophore 256 / 5e-3;
    # DDI 128 / 5e-4; a user file: by its task type)
    c.update(num_epochs=500, early_stopping=50, eval_batch_size=64)
    # DDI: 'reference' reports ROC-AUC/AP at the best validation ROC-AUC and accuracy/F1 at the
    # best validation accuracy, and stops early once both have stalled (DDI/embedder.py,
    # DDI/models_2d/CIGIN.py) | 'roc': everything at the best ROC-AUC, stopping on it alone
    c.ddi_reporting = "reference"
    c.batch_size = common.optional(int)
    # Each split's run: a checkpoint, a log line and an evaluation per epoch.
    c.update(keep_checkpoints=2, max_consecutive_nonfinite=10, tensorboard=True, allow_config_change=False)
    c.update(common.accelerator())

    # Data.
    # with explicit hydrogens, pairs with both molecules within 128 atoms: FreeSolv 100 %, Abraham
    # 98.6 %, CompSol 100 %, ChChMiner 95.9 %; absorption/emission (no H) 99.5 / 99.4 %
    c.data = common.pairs_data(max_atoms=128, preset="freesolv")
    # DDI (classification) as the reference builds it (DDI/datasets_eval/ddi.py): the positives and
    # as many negatives sampled from the non-positive molecule pairs ('sampled', seeded by
    # negative_seed) | the files' own negatives ('file'; ChChMiner's contradict 106 positives)
    c.data.negatives = "sampled"
    c.data.negative_seed = 0
    # molecule / scaffold splits: 'reference' (40 % of the molecules or scaffolds held out, their
    # pairs halved into validation and test: ddi.py get_molecule_split) | 'three_way' (80/10/10)
    c.data.held_out = "reference"
    # validation and test pairs over max_atoms: kept, with evaluation batches padded to the largest
    # molecule (the reference drops no pair) | False: dropped and counted, as training pairs are
    c.data.keep_eval_pairs = True

    # Targets as they are (the reference's default, --no_normalize) | True: standardised with the
    # training split's mean and std (this code's earlier default)
    c.data.standardize_targets = False

    # Model (relational sizes must equal the pretraining's).
    c.model = common.relational(head_hidden=(256, 128), dropout=0.0)

    # Optimizer: the reference's Adam (weight decay 0, no clipping, no warm-up) at the task's rate,
    # lowered x0.1 by torch's ReduceLROnPlateau after 20 epochs without a validation improvement
    # (validation MSE, mode min; DDI: validation ROC-AUC, mode max). No EMA (ema_decay 0).
    c.optim = common.optimizer(
        warmup_steps=0,
        grad_clip=0.0,
        schedule="plateau",
        plateau_factor=0.1,
        plateau_patience=20,
        min_learning_rate=0.0,
    )
    c.optim.learning_rate = common.optional(float)
    c.optim.plateau_mode = common.optional(str)  # None: 'min' (regression), 'max' (classification)
    return common.resize(c, size, SIZES)
