"""Fine-tuning the CIGIN relational model on pair tasks (from scratch or from a 3DMRL checkpoint).

  --config=experiments/configs/mrl_finetune.py          5-fold CV × 3 seeds (80/10/10), 100 epochs
  --config=experiments/configs/mrl_finetune.py:quick    2 CPU cores: 1 split, a few epochs
  --config=experiments/configs/mrl_finetune.py:tiny     seconds; the tests

Set the task with --config.data.preset (freesolv, abraham, compsol, combisolv, absorption, emission,
lifetime, chchminer, zhangddi) and the split with --config.split (cv | molecule | scaffold; the
DDI presets switch 'cv' to 'molecule' automatically). --config.init_from=<3DMRL workdir> starts
from pretrained 2D weights; the relational sizes and data.explicit_h must match the pretraining.
"""

from experiments.configs import common

CLASSIFICATION = ("chchminer", "zhangddi")

SIZES = common.sizes(
    quick=dict(seeds=(0,), max_splits=1, num_epochs=8, data=dict(max_atoms=40)),
    tiny=dict(
        seeds=(0,),
        num_folds=2,
        max_splits=1,
        num_epochs=2,
        batch_size=8,
        eval_batch_size=16,
        tensorboard=False,
        data=dict(limit=60, num_workers=1),
        model=dict(features=16, num_steps=2, head_hidden=(16,)),
        optim=dict(warmup_steps=1),
    ),
)


def get_config(size=None):
    # Splits and epochs: one run of the experiment runner per split (georecon_jax.tasks.finetune_pairs).
    c = common.ConfigDict(dict(seed=0, num_devices=1))
    c.init_from = ""  # a 3DMRL pretraining workdir, or "" for scratch
    c.split = "cv"  # cv (regression) | molecule | scaffold (DDI)
    c.num_folds = 5
    c.seeds = (0, 1, 2)
    c.max_splits = 0  # 0: all folds × seeds
    c.update(num_epochs=100, batch_size=32, eval_batch_size=64)
    # Each split's run: a checkpoint, a log line and an evaluation per epoch.
    c.update(keep_checkpoints=2, max_consecutive_nonfinite=10, tensorboard=True, allow_config_change=False)
    c.update(common.accelerator())

    # Data.
    c.data = common.pairs_data(max_atoms=64, preset="freesolv")
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

    # Model (relational sizes must equal the pretraining's).
    c.model = common.relational(head_hidden=(256, 128), dropout=0.0)

    # Optimizer: no EMA of the weights in this loop.
    c.optim = common.optimizer(learning_rate=1e-3, warmup_steps=50, final_lr_fraction=0.1)
    del c.optim.ema_decay
    return common.resize(c, size, SIZES)
