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
import ml_collections

from experiments.configs import georecon


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.workflow = "finetune"
    c.task = "qm9"
    c.target = "homo"
    c.pretrained = ml_collections.FieldReference(None, field_type=str)
    c.seed = 0
    c.num_steps = 300_000
    c.batch_size = 128           # Coord's QM9 fine-tuning batch
    c.num_devices = 0            # 0: all local devices
    c.log_every = 50
    c.eval_every = 1000
    c.checkpoint_every = 1000
    c.keep_checkpoints = 3
    c.max_consecutive_nonfinite = 10
    c.tensorboard = True
    c.allow_config_change = False
    c.evaluate_at_end = True     # test-set evaluation (results.json, results.md, parity plot)

    # Early stopping on the validation metric (MAE for QM9); 0 disables.
    c.early_stopping = ml_collections.ConfigDict(dict(patience=50, min_delta=0.0))

    # Data.
    c.data = ml_collections.ConfigDict()
    c.data.dataset = "qm9"
    c.data.cache_dir = ml_collections.FieldReference(None, field_type=str)
    c.data.source_dir = ml_collections.FieldReference(None, field_type=str)
    c.data.limit = ml_collections.FieldReference(None, field_type=int)
    c.data.split_seed = 0
    c.data.strict = False
    c.data.num_train_labels = ml_collections.FieldReference(None, field_type=int)  # None: all 110k
    c.data.num_eval_molecules = ml_collections.FieldReference(None, field_type=int)  # validation subset
    c.data.num_test_molecules = ml_collections.FieldReference(None, field_type=int)  # None: whole test split

    # Graphs and padding.
    c.graph = ml_collections.ConfigDict(dict(neighbor_list="all_pairs", skin=1.0, num_buckets=3))

    # Model: the encoder must match the pretrained one.
    c.model = ml_collections.ConfigDict()
    c.model.encoder = georecon.base_config().model.encoder
    c.model.head = ml_collections.ConfigDict(dict(kind="auto", hidden=0))  # hidden 0: features // 2
    c.model.reference = "auto"   # 'auto' | 'least_squares' | 'none'
    c.model.denoise_head = True

    # Loss.
    c.loss = ml_collections.ConfigDict()
    c.loss.name = "l1"           # 'l1' | 'mse'
    c.loss.denoise_weight = 0.1  # Coord's fine-tuning regulariser; 0 disables
    c.loss.denoise_sigma = 0.005  # Å
    c.loss.energy_weight = 1.0   # MD17 only
    c.loss.force_weight = 0.0    # MD17 only

    # Optimizer.
    c.optim = ml_collections.ConfigDict(dict(
        optimizer="adamw", learning_rate=4e-4, warmup_steps=10_000, weight_decay=0.0,
        grad_clip=10.0, final_lr_fraction=0.0, ema_decay=0.0))
    return c


def apply_size(c: ml_collections.ConfigDict, size: str) -> ml_collections.ConfigDict:
    if size == "quick":
        c.num_steps = 3000
        c.batch_size = 32
        c.log_every = 25
        c.eval_every = 250
        c.checkpoint_every = 250
        c.keep_checkpoints = 20
        c.early_stopping.patience = 0
        c.data.num_train_labels = 10_000
        c.data.num_eval_molecules = 1000
        c.data.num_test_molecules = 2000
        c.model.encoder.update(num_layers=3, features=64, num_heads=4, num_rbf=32)
        c.optim.learning_rate = 1e-3
        c.optim.warmup_steps = 100
    elif size == "tiny":
        c.num_steps = 6
        c.batch_size = 8
        c.log_every = 2
        c.eval_every = 3
        c.checkpoint_every = 3
        c.tensorboard = False
        c.early_stopping.patience = 0
        c.data.limit = 400
        c.data.num_eval_molecules = 16
        c.data.num_test_molecules = 16
        c.graph.num_buckets = 1
        c.model.encoder.update(num_layers=2, features=16, num_heads=2, num_rbf=8)
        c.optim.learning_rate = 1e-3
        c.optim.warmup_steps = 2
    elif size:
        raise ValueError(f"unknown config size {size!r}: use '', 'quick' or 'tiny'")
    return c


def get_config(size: str = "") -> ml_collections.ConfigDict:
    return apply_size(base_config(), size)
