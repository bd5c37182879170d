"""Fine-tuning on one QM9 target (TorchMD-Net / Coord protocol), from a pretrained encoder or scratch.

  --config=experiments/configs/finetune_qm9.py         paper scale (8 x 256 ET, batch 128, lr 4e-4)
  --config=experiments/configs/finetune_qm9.py:quick   2 CPU cores, minutes (10,000 labels)
  --config=experiments/configs/finetune_qm9.py:tiny    seconds; used by the tests

  --config.target=homo           one of mu alpha homo lumo gap r2 zpve U0 U H G cv
  --config.pretrained=<path>     a pretraining workdir, its checkpoints/ folder or one step folder;
                                 unset: train from scratch. The encoder shape must match.

Heads (model.head.kind='auto'): dipole head for mu, electronic-spatial-extent head for r2, a
scalar head summed over atoms otherwise. Per-element reference energies (model.reference='auto'):
least squares on the training labels for U0, U, H, G; none otherwise.
"""

from experiments.configs import common

SIZES = common.sizes(
    common.LOOP_SIZES,
    common.ENCODER_SIZES,
    quick=dict(
        num_steps=3000,
        batch_size=32,
        eval_every=250,
        checkpoint_every=250,
        keep_checkpoints=20,
        early_stopping=dict(patience=0),
        data=dict(num_train_labels=10_000, num_eval_molecules=1000, num_test_molecules=2000),
        optim=dict(warmup_steps=100),
    ),
    tiny=dict(
        num_steps=6,
        batch_size=8,
        eval_every=3,
        checkpoint_every=3,
        early_stopping=dict(patience=0),
        data=dict(limit=400, num_eval_molecules=16, num_test_molecules=16),
    ),
)


def get_config(size=None):
    # Training loop; batch 128 is Coord's QM9 fine-tuning batch.
    c = common.training_loop(num_steps=300_000, batch_size=128, eval_every=1000)
    c.task = "qm9"
    c.target = "homo"
    c.pretrained = common.optional(str)
    c.evaluate_at_end = True  # test-set evaluation (results.json, results.md, parity plot)
    # Early stopping on the validation metric (MAE for QM9); 0 disables.
    c.early_stopping = common.ConfigDict(dict(patience=50, min_delta=0.0))

    # Data, graphs and padding.
    c.data = common.qm9_data(
        num_train_labels=common.optional(int),  # None: all 110k
        num_eval_molecules=common.optional(int),  # validation subset
        num_test_molecules=common.optional(int),
    )  # None: whole test split
    c.graph = common.graph(num_buckets=3)

    # Model: the encoder must match the pretrained one.
    c.model = common.ConfigDict()
    c.model.encoder = common.encoder()
    c.model.head = common.ConfigDict(dict(kind="auto", hidden=0))  # hidden 0: features // 2
    c.model.reference = "auto"  # 'auto' | 'least_squares' | 'none'
    c.model.denoise_head = True

    # Loss.
    c.loss = common.ConfigDict()
    c.loss.name = "l1"  # 'l1' | 'mse'
    c.loss.denoise_weight = 0.1  # Coord's fine-tuning regulariser; 0 disables
    c.loss.denoise_sigma = 0.005  # Å
    c.loss.energy_weight = 1.0  # MD17 only
    c.loss.force_weight = 0.0  # MD17 only

    # Optimizer.
    c.optim = common.optimizer()
    return common.resize(c, size, SIZES)
