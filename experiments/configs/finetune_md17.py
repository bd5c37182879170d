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
  --config.data.name=...         what the reports call the data (default: <molecule>, or the training
                                 file's <folder>/<stem> when files are named, e.g. 3BPA/train_300K)

Split: 950 training / 50 validation frames drawn from the training file (seed data.split_seed).
Energies in kcal/mol, forces in kcal/mol/Å (data.energy_unit='eV' converts on load).
Everything not set here is finetune_qm9.py's (loop, heads, optimizer), but not its sizes.
"""

from experiments.configs import common, finetune_qm9

SIZES = common.sizes(
    common.LOOP_SIZES,
    common.ENCODER_SIZES,
    quick=dict(
        num_steps=1500,
        batch_size=16,
        eval_every=250,
        checkpoint_every=250,
        keep_checkpoints=10,
        early_stopping=dict(patience=0),
    ),
    tiny=dict(
        molecule="ethanol",
        num_steps=6,
        batch_size=4,
        eval_every=3,
        checkpoint_every=3,
        early_stopping=dict(patience=0),
        data=dict(num_train=16, num_val=8, num_test_molecules=12),
    ),
)


def get_config(size=None):
    # Training loop (from finetune_qm9.py, paper scale).
    c = finetune_qm9.get_config()
    c.update(
        task="md17",
        target="energy",
        molecule="aspirin",
        num_steps=100_000,
        batch_size=80,
        eval_every=500,
        checkpoint_every=500,
    )
    c.early_stopping.patience = 30

    # Data.
    c.data = common.ConfigDict(dict(dataset="md17", split_seed=0, strict=False))
    c.data.data_dir = common.optional(str)
    c.data.train_file = common.optional(str)
    c.data.test_file = common.optional(str)
    c.data.name = common.optional(str)  # the reports' label (tasks.property_data.run_label)
    c.data.file_energy_unit = "kcal/mol"  # what the files hold (extended XYZ records no unit)
    c.data.energy_unit = "kcal/mol"  # what training and the reports use
    c.data.num_train = 950
    c.data.num_val = 50
    c.data.num_test_molecules = common.optional(int)  # None: all test frames

    # Model: Frad's 6 x 128 ET; one molecule, so the mean training energy is the only reference.
    c.model.encoder.update(num_layers=6, features=128, num_heads=8, num_rbf=32)
    c.model.head.kind = "scalar"
    c.model.update(reference="none", denoise_head=False)

    # Loss: energies and forces.
    c.loss.update(name="mse", denoise_weight=0.0, energy_weight=0.2, force_weight=0.8)

    # Optimizer.
    c.optim.update(learning_rate=1e-3, warmup_steps=1000)
    return common.resize(c, size, SIZES)
