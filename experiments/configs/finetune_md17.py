"""Fine-tuning on one MD17-family molecule: energies and forces (F = -dE/dR by jax.grad),
torchmd-net's protocol.

  --config=experiments/configs/finetune_md17.py         torchmd-net examples/ET-MD17.yaml (below)
  --config=experiments/configs/finetune_md17.py:quick   2 CPU cores, minutes
  --config=experiments/configs/finetune_md17.py:tiny    seconds; used by the tests
  finetune_md17_frad.py                                 Frad's protocol (more frames, batch 80,
                                                        Coord's regulariser)

The 'torchmd' protocol, as torchmd-net's examples/ET-MD17.yaml states it: 950 training / 50
validation frames drawn from the training file; batch 8; 6 x 128 ET, 8 heads, 32 RBF, 5 Å;
EquivariantScalar head; MSE with energy weight 0.2 and force weight 0.8, the energy loss smoothed
with ema_alpha_y = 0.05 (its gradient is 0.05 x the energy loss's: loss.energy_loss_scale);
energies standardised by the std of the training energies; AdamW lr 1e-3 with 1,000 linear
warm-up steps, then ReduceLROnPlateau on the validation loss (factor 0.8, patience 30 epochs,
lr_min 1e-7); early stopping after 300 epochs without improvement; up to 3,000 epochs. One
evaluation per epoch (950 / 8 = 119 steps). No vector norm (torchmd-net 3.x has none; the
pretraining configs `georecon.py:md17` and `coord.py:md17` match). ``vector_cutoff: true``
(model.encoder.vector_cutoff): the cutoff weighs the values, so that energy and forces are
continuous where a pair crosses 5 Å and molecular dynamics conserves energy (README, MD section);
the pretraining configs keep False (pre-training-via-denoising's ET), and their encoders load
either way. Departure: validation losses are not EMA-smoothed.

  --config.molecule=aspirin      rMD17 files <data_dir>/rmd17_<molecule>_{train,test}_01.npz, where
                                 data_dir is --config.data.data_dir, else $GEORECON_MD17_DIR, else
                                 $GEORECON_CACHE/md17 (what data_prep/md17.py writes)
  --config.data.train_file=...   or name the files (rMD17 .npz, sGDML .npz, extended XYZ)
  --config.data.test_file=...    unset and no <molecule>_test file: test on the unused train frames
  --config.data.name=...         what the reports call the data (default: <molecule>, or the training
                                 file's <folder>/<stem> when files are named, e.g. 3BPA/train_300K)
  --config.pretrained=<run>      a pretraining run with the same encoder: georecon.py:md17,
                                 coord.py:md17

Energies in kcal/mol, forces in kcal/mol/Å (data.energy_unit='eV' converts on load).
Everything not set here is finetune_qm9.py's (heads, loss fields), but not its sizes.
"""

from experiments.configs import common, finetune_qm9

SIZES = common.sizes(
    common.LOOP_SIZES,
    common.ENCODER_SIZES,
    quick=common.schedule(
        1500,
        8,
        every=250,
        keep_checkpoints=10,
        early_stopping=dict(patience=0),
    ),
    tiny=common.schedule(
        6,
        4,
        every=3,
        molecule="ethanol",
        early_stopping=dict(patience=0),
        data=dict(num_train=16, num_val=8, num_test_molecules=12),
    ),
)

# torchmd-net ET-MD17.yaml: train_size 950, batch_size 8, so one epoch is 119 steps.
EPOCH_STEPS = 119


def base_config():
    """Data, model and loss shared by the MD17 protocols (this file's and Frad's)."""
    c = finetune_qm9.get_config()
    c.update(task="md17", target="energy", molecule="aspirin")

    # Data.
    c.data = common.ConfigDict(dict(dataset="md17", split_seed=0, strict=False))
    c.data.workers = common.batch_workers()
    c.data.data_dir = common.optional(str)
    c.data.train_file = common.optional(str)
    c.data.test_file = common.optional(str)
    c.data.name = common.optional(str)  # the reports' label (tasks.property_data.run_label)
    c.data.file_energy_unit = "kcal/mol"  # what the files hold (extended XYZ records no unit)
    c.data.energy_unit = "kcal/mol"  # what training and the reports use
    c.data.num_train = 950
    c.data.num_val = 50
    c.data.shrink_split = False  # True: a file with fewer frames gets a proportionally smaller split
    c.data.std_from = "energies"  # std of the training energies (torchmd-net data.py)
    c.data.num_test_molecules = common.optional(int)  # None: all test frames

    # Model: the ET-MD17 encoder; one molecule, so the mean training energy is the only reference.
    # No vector norm, as torchmd-net 3.x's ET-MD17 (vec_norm=whitened trains too: its second
    # derivative is finite since issue 35); vector_cutoff as ET-MD17.yaml.
    c.model.encoder = common.encoder("md17", vec_norm="none", vector_cutoff=True)
    c.model.head.kind = "equivariant_scalar"
    c.model.update(reference="none", denoise_head=False)

    # Loss: energies and forces (y_weight 0.2, neg_dy_weight 0.8).
    c.loss.update(denoise_weight=0.0, energy_weight=0.2, force_weight=0.8)
    return c


def get_config(size=None):
    c = base_config()
    # Training loop: 3,000 epochs of 119 steps, one evaluation per epoch.
    c.update(
        num_steps=3000 * EPOCH_STEPS,
        batch_size=8,
        eval_every=EPOCH_STEPS,
        checkpoint_every=EPOCH_STEPS,
    )
    c.early_stopping.patience = 300  # epochs (evaluations)
    c.loss.energy_loss_scale = 0.05  # ema_alpha_y

    # Optimizer: lr 1e-3, 1,000 warm-up steps, ReduceLROnPlateau(0.8, 30 epochs, min 1e-7).
    c.optim.update(
        learning_rate=1e-3,
        warmup_steps=1000,
        schedule="plateau",
        plateau_factor=0.8,
        plateau_patience=30,
        min_learning_rate=1e-7,
    )
    return common.resize(c, size, SIZES)
