"""Fine-tuning the CIGIN relational model on pair tasks (from scratch or from a 3DMRL checkpoint).

  --config=experiments/configs/mrl_finetune.py          5-fold CV × 3 seeds (80/10/10), 100 epochs
  --config=experiments/configs/mrl_finetune.py:quick    2 CPU cores: 1 split, a few epochs
  --config=experiments/configs/mrl_finetune.py:tiny     seconds; the tests

Set the task with --config.data.preset (freesolv, abraham, compsol, combisolv, absorption, emission,
lifetime, chchminer, zhangddi) and the split with --config.split (cv | molecule | scaffold; the
DDI presets switch 'cv' to 'molecule' automatically). --config.init_from=<3DMRL workdir> starts
from pretrained 2D weights; the relational sizes and data.explicit_h must match the pretraining.
"""
import ml_collections

CLASSIFICATION = ("chchminer", "zhangddi")


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.init_from = ""              # a 3DMRL pretraining workdir, or "" for scratch
    c.split = "cv"                # cv (regression) | molecule | scaffold (DDI)
    c.num_folds = 5
    c.seeds = (0, 1, 2)
    c.max_splits = 0              # 0: all folds × seeds
    c.num_epochs = 100
    c.batch_size = 32
    c.eval_batch_size = 64
    c.num_devices = 1

    # Data.
    c.data = ml_collections.ConfigDict()
    c.data.preset = "freesolv"
    c.data.data_root = ml_collections.FieldReference(None, field_type=str)
    c.data.cache_dir = ml_collections.FieldReference(None, field_type=str)
    c.data.limit = ml_collections.FieldReference(None, field_type=int)      # first N rows (tests)
    c.data.max_pairs = ml_collections.FieldReference(None, field_type=int)  # random subset of N pairs
    c.data.max_atoms = 64
    c.data.explicit_h = False     # must equal the pretraining's (checked)
    c.data.conformer_seed = 0
    c.data.mmff = False
    c.data.num_workers = 2

    # Model (relational sizes must equal the pretraining's).
    c.model = ml_collections.ConfigDict(dict(features=64, num_steps=3, set2set_steps=2,
                                             head_hidden=(256, 128), dropout=0.0))

    # Optimizer.
    c.optim = ml_collections.ConfigDict(dict(optimizer="adamw", learning_rate=1e-3, warmup_steps=50,
                                             weight_decay=0.0, grad_clip=10.0, final_lr_fraction=0.1))
    return c


def apply_size(c, size: str):
    if size == "quick":
        c.seeds = (0,)
        c.max_splits = 1
        c.num_epochs = 8
        c.data.max_atoms = 40
    elif size == "tiny":
        c.seeds = (0,)
        c.num_folds = 2
        c.max_splits = 1
        c.num_epochs = 2
        c.batch_size = 8
        c.eval_batch_size = 16
        c.data.limit = 60
        c.data.num_workers = 1
        c.model.update(features=16, num_steps=2, head_hidden=(16,))
        c.optim.warmup_steps = 1
    elif size:
        raise ValueError(f"unknown config size {size!r}: use '', 'quick' or 'tiny'")
    return c


def get_config(size: str = ""):
    return apply_size(base_config(), size)
