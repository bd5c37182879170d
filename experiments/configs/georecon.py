"""GeoRecon pretraining on QM9.

  --config=experiments/configs/georecon.py         paper scale (8 layers x 256, 64 RBF, 5 Å)
  --config=experiments/configs/georecon.py:quick   2 CPU cores, a few minutes (README quick start)
  --config=experiments/configs/georecon.py:tiny    seconds; used by the tests

Any field can be overridden on the command line, e.g. --config.optim.learning_rate=2e-4.
"""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.workflow = "pretrain"      # module of georecon_jax.workflows that runs this config
    c.seed = 0
    c.num_steps = 200_000
    c.batch_size = 70            # Coord's pretraining batch size
    c.num_devices = 0            # 0: all local devices
    c.micro_batches = 0          # per device and step, run one after another; 0: automatic (CPU:
                                 # >= 4 molecules each, keeps per-edge tensors in cache; else 1)
    c.log_every = 50
    c.eval_every = 2000
    c.checkpoint_every = 2000
    c.keep_checkpoints = 3
    c.max_consecutive_nonfinite = 10
    c.tensorboard = True
    c.allow_config_change = False

    # Data.
    c.data = ml_collections.ConfigDict()
    c.data.dataset = "qm9"
    c.data.cache_dir = ml_collections.FieldReference(None, field_type=str)  # default ~/.cache/georecon_jax
    c.data.source_dir = ml_collections.FieldReference(None, field_type=str)  # original QM9 .xyz files
    c.data.limit = ml_collections.FieldReference(None, field_type=int)  # first N molecules only
    c.data.split_seed = 0
    c.data.strict = False
    c.data.num_eval_molecules = 2000

    # Graphs and padding.
    c.graph = ml_collections.ConfigDict()
    c.graph.neighbor_list = "all_pairs"  # or "radius" (pairs within cutoff + skin)
    c.graph.skin = 1.0
    c.graph.num_buckets = 5     # padded shapes (each compiles once); 5: ~6 % padding on QM9

    # Model.
    c.model = ml_collections.ConfigDict()
    # trainable_rbf=False: the exp-normal basis stays fixed, as in Coord's pretraining config
    # (pre-training-via-denoising examples/ET-PCQM4MV2.yaml) and torchmd-net's ET-QM9.yaml.
    c.model.encoder = ml_collections.ConfigDict(dict(
        num_layers=8, features=256, num_heads=8, num_rbf=64, cutoff=5.0, max_z=100,
        trainable_rbf=False))
    c.model.decoder = ml_collections.ConfigDict(dict(code_dim=256, num_layers=1, num_heads=8, num_rbf=32))

    # Objective.
    c.objective = ml_collections.ConfigDict()
    c.objective.name = "georecon"
    c.objective.schedule = "geometric"   # log-uniform σ per molecule; "fixed" uses sigma_max
    c.objective.sigma_min = 0.01         # Å
    c.objective.sigma_max = 2.0          # Å
    c.objective.node_denoise_weight = 0.1
    c.objective.clean_weight = 0.1
    c.objective.num_sampling_steps = 50
    c.objective.num_recon_molecules = 256  # held-out molecules rebuilt from z at the end

    # Optimizer.
    c.optim = ml_collections.ConfigDict()
    c.optim.optimizer = "adamw"
    c.optim.learning_rate = 4e-4
    c.optim.warmup_steps = 10_000
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 10.0
    c.optim.final_lr_fraction = 0.0
    c.optim.ema_decay = 0.0
    return c


def apply_size(c: ml_collections.ConfigDict, size: str) -> ml_collections.ConfigDict:
    """Shrinks a config to the 'quick' (2 CPU cores, minutes) or 'tiny' (tests) setting."""
    if size == "quick":
        c.num_steps = 600
        c.batch_size = 32
        c.log_every = 25
        c.eval_every = 200
        c.checkpoint_every = 200
        c.data.num_eval_molecules = 256
        c.model.encoder.update(num_layers=3, features=64, num_heads=4, num_rbf=32)
        if c.model.get("decoder") is not None:
            c.model.decoder.update(code_dim=64, num_heads=4, num_rbf=16)
        c.objective.num_sampling_steps = 30
        c.objective.num_recon_molecules = 64
        c.optim.learning_rate = 1e-3
        c.optim.warmup_steps = 50
    elif size == "tiny":
        c.num_steps = 8
        c.batch_size = 8
        c.log_every = 2
        c.eval_every = 4
        c.checkpoint_every = 4
        c.tensorboard = False
        c.data.limit = 400
        c.data.num_eval_molecules = 16
        c.graph.num_buckets = 1
        c.model.encoder.update(num_layers=2, features=16, num_heads=2, num_rbf=8)
        if c.model.get("decoder") is not None:
            c.model.decoder.update(code_dim=16, num_heads=2, num_rbf=8)
        c.objective.num_sampling_steps = 4
        c.objective.num_recon_molecules = 8
        c.optim.learning_rate = 1e-3
        c.optim.warmup_steps = 2
    elif size:
        raise ValueError(f"unknown config size {size!r}: use '', 'quick' or 'tiny'")
    return c


def get_config(size: str = "") -> ml_collections.ConfigDict:
    return apply_size(base_config(), size)
