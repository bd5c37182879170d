"""Fine-tuning on one MD17-family molecule: energies and forces (F = -dE/dR by jax.grad).

  --config=experiments/configs/finetune_md17.py         Frad's setting (6 x 128 ET, 32 RBF, batch 80,
                                                        lr 1e-3, energy/force weights 0.2/0.8)
  --config=experiments/configs/finetune_md17.py:quick   2 CPU cores, minutes
  --config=experiments/configs/finetune_md17.py:tiny    seconds; used by the tests

  --config.molecule=aspirin      rMD17 files <data_dir>/rmd17_<molecule>_{train,test}_01.npz, where
                                 data_dir is --config.data.data_dir, else $GEORECON_MD17_DIR, else
                                 $GEORECON_CACHE/md17 (what data_prep/md17.py writes)
  --config.data.train_file=...   or name the files (rMD17 .npz, sGDML .npz, extended XYZ)
  --config.data.test_file=...    unset and no <molecule>_test file: test on the unused train frames

Split: 950 training / 50 validation frames drawn from the training file (seed data.split_seed).
Energies in kcal/mol, forces in kcal/mol/Å (data.energy_unit='eV' converts on load).
"""
import ml_collections

from experiments.configs import finetune_qm9


def base_config() -> ml_collections.ConfigDict:
    c = finetune_qm9.base_config()
    c.task = "md17"
    c.target = "energy"
    c.molecule = "aspirin"
    c.num_steps = 100_000
    c.batch_size = 80
    c.eval_every = 500
    c.checkpoint_every = 500
    c.early_stopping.patience = 30

    c.data = ml_collections.ConfigDict()
    c.data.dataset = "md17"
    c.data.data_dir = ml_collections.FieldReference(None, field_type=str)
    c.data.train_file = ml_collections.FieldReference(None, field_type=str)
    c.data.test_file = ml_collections.FieldReference(None, field_type=str)
    c.data.file_energy_unit = "kcal/mol"  # what the files hold (extended XYZ records no unit)
    c.data.energy_unit = "kcal/mol"       # what training and the reports use
    c.data.num_train = 950
    c.data.num_val = 50
    c.data.split_seed = 0
    c.data.strict = False
    c.data.num_test_molecules = ml_collections.FieldReference(None, field_type=int)  # None: all test frames

    c.model.encoder.update(num_layers=6, features=128, num_heads=8, num_rbf=32)
    c.model.head.kind = "scalar"
    c.model.reference = "none"   # one molecule: the mean training energy is the only reference
    c.model.denoise_head = False

    c.loss.name = "mse"
    c.loss.denoise_weight = 0.0
    c.loss.energy_weight = 0.2
    c.loss.force_weight = 0.8

    c.optim.learning_rate = 1e-3
    c.optim.warmup_steps = 1000
    return c


def apply_size(c: ml_collections.ConfigDict, size: str) -> ml_collections.ConfigDict:
    if size == "quick":
        c.num_steps = 1500
        c.batch_size = 16
        c.log_every = 25
        c.eval_every = 250
        c.checkpoint_every = 250
        c.keep_checkpoints = 10
        c.early_stopping.patience = 0
        c.model.encoder.update(num_layers=3, features=64, num_heads=4, num_rbf=32)
        c.optim.warmup_steps = 50
    elif size == "tiny":
        c.molecule = "ethanol"
        c.num_steps = 6
        c.batch_size = 4
        c.log_every = 2
        c.eval_every = 3
        c.checkpoint_every = 3
        c.tensorboard = False
        c.early_stopping.patience = 0
        c.data.num_train = 16
        c.data.num_val = 8
        c.data.num_test_molecules = 12
        c.graph.num_buckets = 1
        c.model.encoder.update(num_layers=2, features=16, num_heads=2, num_rbf=8)
        c.optim.warmup_steps = 2
    elif size:
        raise ValueError(f"unknown config size {size!r}: use '', 'quick' or 'tiny'")
    return c


def get_config(size: str = "") -> ml_collections.ConfigDict:
    return apply_size(base_config(), size)
