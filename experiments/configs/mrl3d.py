"""3DMRL pretraining (Lee et al., NeurIPS 2025) on solvation pairs.

  --config=experiments/configs/mrl3d.py         paper scale (SchNet 6 × 64, 50 Gaussians, 5 Å; batch 48)
  --config=experiments/configs/mrl3d.py:quick   2 CPU cores, a few minutes
  --config=experiments/configs/mrl3d.py:tiny    seconds; used by the tests

  python -m experiments.pretrain --config=experiments/configs/mrl3d.py:quick --workdir=runs/mrl3d_quick

Any field can be overridden, e.g. --config.data.presets='("combisolv","absorption")'.
"""
import ml_collections


def base_config() -> ml_collections.ConfigDict:
    c = ml_collections.ConfigDict()
    c.workflow = "mrl3d"         # georecon_jax.workflows.mrl3d.run
    c.seed = 0
    c.num_steps = 21_000         # ≈ 100 epochs of 10k pairs at batch 48
    c.batch_size = 48            # 3DMRL
    c.num_devices = 0            # 0: all local devices
    c.log_every = 50
    c.eval_every = 2000
    c.checkpoint_every = 2000
    c.keep_checkpoints = 3
    c.max_consecutive_nonfinite = 10
    c.tensorboard = True
    c.allow_config_change = False

    # Data.
    c.data = ml_collections.ConfigDict()
    c.data.presets = ("combisolv",)       # keys of georecon_jax.data.pairs.PRESETS
    c.data.data_root = ml_collections.FieldReference(None, field_type=str)  # default ../shared/data or $GEORECON_DATA
    c.data.cache_dir = ml_collections.FieldReference(None, field_type=str)  # default $GEORECON_CACHE or ~/.cache/georecon_jax
    c.data.pairs = "combinations"         # 3DMRL: all solute × solvent combinations; or "observed"
    c.data.combination_fraction = 0.2     # 3DMRL uses a 20% subset of the combinations
    c.data.max_pairs = ml_collections.FieldReference(None, field_type=int)
    c.data.limit = ml_collections.FieldReference(None, field_type=int)      # first N rows of each file
    c.data.max_atoms = 48                 # molecules with more (heavy) atoms are left out, counted
    c.data.explicit_h = False             # hydrogens as graph nodes (must match fine-tuning: it is checked)
    c.data.conformer_seed = 0             # ETKDG seed
    c.data.mmff = False                   # MMFF-optimise the ETKDG conformer
    c.data.num_workers = 2                # processes embedding conformers (once; then cached)
    c.data.split_seed = 0
    c.data.num_eval_pairs = 512

    # Virtual environment.
    c.environment = ml_collections.ConfigDict()
    c.environment.num_copies = 5          # K
    c.environment.min_radius = 1.5        # Å; only one-atom molecules (radius 0) are affected
    c.environment.min_distance = 0.0      # Å; > 0 turns on clash rejection (3DMRL: none)
    c.environment.num_trials = 8          # placements tried per copy when rejecting clashes
    c.environment.max_atoms = 96          # atom budget M per environment (real atoms compacted into it;
                                          # a pair gets fewer copies if n1 + K·n2 > M, counted as copies_cut);
                                          # 0: no compaction, M = N1 + K·N2 slots

    # Model.
    c.model = ml_collections.ConfigDict()
    c.model.relational = ml_collections.ConfigDict(dict(features=64, num_steps=3, set2set_steps=2))
    c.model.encoder3d = ml_collections.ConfigDict(dict(
        name="schnet",                    # or "et" (georecon_jax.models.et.EquivariantTransformer)
        atom_labels="molecule",           # "molecule" (3DMRL) or "element" (use with a GeoRecon ET)
        features=64, num_interactions=6, num_gaussians=50, cutoff=5.0,
        num_layers=4, num_heads=4, num_rbf=32, trainable_rbf=False,   # ET only (as GeoRecon's)
        init_from=""))                    # ET only: a GeoRecon/Coord workdir whose encoder to start from
    c.model.projection_hidden = (256,)
    c.model.projection_dim = 128
    c.model.force = ml_collections.ConfigDict(dict(features=64, num_gaussians=32, cutoff=10.0))

    # Objective.
    c.objective = ml_collections.ConfigDict()
    c.objective.temperature = 0.2
    c.objective.force_weight = 0.1        # α

    # Optimizer (3DMRL: Adam, lr 1e-4 for solvation).
    c.optim = ml_collections.ConfigDict()
    c.optim.optimizer = "adamw"
    c.optim.learning_rate = 1e-4
    c.optim.warmup_steps = 500
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 10.0
    c.optim.final_lr_fraction = 1.0       # constant after warm-up, as 3DMRL's Adam
    c.optim.ema_decay = 0.0
    return c


def apply_size(c: ml_collections.ConfigDict, size: str) -> ml_collections.ConfigDict:
    if size == "quick":
        c.num_steps = 200
        c.batch_size = 16
        c.log_every = 10
        c.eval_every = 100
        c.checkpoint_every = 100
        c.data.pairs = "observed"
        c.data.max_atoms = 24
        c.environment.max_atoms = 64      # 95% of combisolv pairs (≤ 24 atoms) keep all 5 copies
        c.data.num_eval_pairs = 128
        c.model.encoder3d.update(num_interactions=3)
        c.optim.learning_rate = 5e-4
        c.optim.warmup_steps = 20
    elif size == "tiny":
        c.num_steps = 6
        c.batch_size = 8
        c.log_every = 2
        c.eval_every = 3
        c.checkpoint_every = 3
        c.tensorboard = False
        c.data.presets = ("freesolv",)
        c.data.pairs = "observed"
        c.data.limit = 60
        c.data.num_workers = 1
        c.data.num_eval_pairs = 8
        c.environment.num_copies = 3
        c.environment.max_atoms = 0
        c.model.relational.update(features=16, num_steps=2)
        c.model.encoder3d.update(features=16, num_interactions=2, num_gaussians=12, num_layers=1,
                                 num_heads=2, num_rbf=8)
        c.model.projection_hidden = (32,)
        c.model.projection_dim = 16
        c.model.force.update(features=16, num_gaussians=8)
        c.optim.learning_rate = 1e-3
        c.optim.warmup_steps = 1
    elif size:
        raise ValueError(f"unknown config size {size!r}: use '', 'quick' or 'tiny'")
    return c


def get_config(size: str = "") -> ml_collections.ConfigDict:
    return apply_size(base_config(), size)
