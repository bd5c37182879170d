"""3DMRL pretraining (Lee et al., NeurIPS 2025) on solvation pairs.

  --config=experiments/configs/mrl3d.py         paper scale (SchNet 6 × 64, 50 Gaussians, 5 Å; batch 48)
  --config=experiments/configs/mrl3d.py:quick   2 CPU cores, a few minutes
  --config=experiments/configs/mrl3d.py:tiny    seconds; used by the tests
  --config=experiments/configs/mrl3d.py:+chromophore  the reference's chromophore pretraining
      (MI/scripts/pretrain.sh: absorption ∪ emission molecules, 1 % of the combinations, lr 5e-4);
      +ddi: its DDI pretraining (DDI/scripts/pretrain.sh); both combine with a size (quick+ddi)

  python -m experiments.pretrain --config=experiments/configs/mrl3d.py:quick --workdir=runs/mrl3d_quick

Any field can be overridden, e.g. --config.data.presets='("combisolv","absorption")'.
"""

from experiments.configs import common

SIZES = common.sizes(
    common.LOOP_SIZES,
    quick=common.schedule(
        200,
        16,
        every=100,
        num_epochs=None,
        log_every=10,
        data=dict(pairs="observed", max_atoms=40, num_eval_pairs=128),
        # with explicit hydrogens: 92.8 % of the observed CombiSolv pairs have both molecules
        # within 40 atoms, and 94.8 % of those keep all 5 copies in 160 slots
        environment=dict(max_atoms=160),
        model=dict(encoder3d=dict(num_interactions=3)),
        optim=dict(learning_rate=5e-4, warmup_steps=20),
    ),
    tiny=common.schedule(
        6,
        8,
        every=3,
        num_epochs=None,
        data=dict(presets=("freesolv",), pairs="observed", limit=60, num_workers=1, num_eval_pairs=8),
        environment=dict(num_copies=3, max_atoms=0),
        model=dict(
            relational=dict(features=16, num_steps=2),
            projection_hidden=(32,),
            projection_dim=16,
            encoder3d=dict(
                features=16, num_interactions=2, num_gaussians=12, num_layers=1, num_heads=2, num_rbf=8
            ),
            force=dict(features=16, num_gaussians=8),
        ),
        optim=dict(warmup_steps=1),
    ),
)

# Pretraining sets other than solvation, as '+' variants of any size (mrl3d.py:quick+chromophore):
# the reference's MI/scripts/pretrain.sh (chromophore) and DDI/scripts/pretrain.sh (DDI).
VARIANTS = dict(
    # the chromophores and solvents of absorption ∪ emission (chromophore_full.csv), 1 % of their
    # combinations, lr 5e-4
    chromophore=dict(
        data=dict(presets=("absorption", "emission"), combination_fraction=0.01),
        optim=dict(learning_rate=5e-4),
    ),
    # the positive drug pairs (DDI/datasets_pretrain/ddi.py: label 1, duplicates dropped), a random
    # 40 % of them, lr 5e-4. The reference pools ChChMiner, DeepDDI and ZhangDDI, test files
    # included; here the ChChMiner files present (their test positives included, as the reference)
    ddi=dict(
        data=dict(presets=("chchminer",), pairs="observed", observed_fraction=0.4),
        # its 2D model: one GINE encoder and one Set2Set for both drugs, 300 features
        # (DDI/models_2d/CIGIN.py); fine-tune with mrl_finetune.py:+ddi
        model=dict(relational=dict(architecture="reference_ddi", features=300)),
        optim=dict(learning_rate=5e-4),
    ),
)


def get_config(size=None):
    """``size``: '' (paper scale) or a name of `SIZES`, optionally with '+'-separated `VARIANTS`."""
    return common.with_variants(size, _config, VARIANTS, "3DMRL")


def _config(size=None):
    # Training loop: the reference's 100 epochs (MI/scripts/pretrain.sh --epochs 100) of the
    # training pairs at batch 48; num_epochs, when set, fixes the length in steps from the pairs
    # actually loaded (printed at the start) and num_steps is not used; None: num_steps steps.
    c = common.training_loop(num_steps=21_000, batch_size=48, eval_every=2000)
    c.num_epochs = common.optional(int)
    c.num_epochs = 100

    # Data.
    c.data = common.pairs_data(
        max_atoms=64,  # with explicit hydrogens: 95.7 % of the 20 % combinations fit (48: 91.2 %)
        presets=("combisolv",),  # keys of georecon_jax.data.pairs.PRESETS
        pairs="combinations",  # 3DMRL: all solute × solvent combinations; or "observed"
        combination_fraction=0.2,  # 3DMRL uses a 20% subset of the combinations
        # pairs='observed': a random fraction of the pairs (the reference's DDI --ratio 0.4); pair
        # files with 0/1 labels (DDI) give their positive pairs only, each once (its DDI pretraining)
        observed_fraction=1.0,
        # DDI pretraining: the larger molecule (radius from the centroid) first, the environment
        # built around it; pairs of equal radius dropped (DDI/datasets_pretrain/ddi.py)
        orient_by_radius=True,
        split_seed=0,
        num_eval_pairs=512,
    )

    # Virtual environment.
    c.environment = common.ConfigDict()
    c.environment.num_copies = 5  # K
    c.environment.min_radius = 1.5  # Å; only one-atom molecules (radius 0) are affected
    c.environment.min_distance = 0.0  # Å; > 0 turns on clash rejection (3DMRL: none)
    c.environment.num_trials = 8  # placements tried per copy when rejecting clashes
    # Two defects of the reference implementation, corrected here ('reference' reproduces them;
    # georecon_jax/objectives/environment.py): anchors that are positions in the candidate list
    # taken as atom ids (ring atoms included), and rotations that are not uniform on SO(3)
    c.environment.anchors = "atom"  # | "reference"
    c.environment.rotations = "uniform"  # | "reference"
    c.environment.max_atoms = 256  # (98.1 % of the fitting combinations keep all 5 copies; 96: 38.9 %)
    # atom budget M per environment (real atoms compacted into it;
    # a pair gets fewer copies if n1 + K·n2 > M, counted as copies_cut);
    # 0: no compaction, M = N1 + K·N2 slots

    # Model.
    c.model = common.ConfigDict()
    c.model.relational = common.relational()
    c.model.encoder3d = common.ConfigDict(
        dict(
            name="schnet",  # or "et" (georecon_jax.models.et.EquivariantTransformer)
            atom_labels="molecule",  # "molecule" (3DMRL) or "element" (use with a GeoRecon ET)
            features=64,
            num_interactions=6,
            num_gaussians=50,
            cutoff=5.0,
            num_layers=4,
            num_heads=4,
            num_rbf=32,
            trainable_rbf=False,  # ET only (as GeoRecon's)
            init_from="",
        )
    )  # ET only: a GeoRecon/Coord workdir whose encoder to start from
    c.model.projection_hidden = (256,)
    c.model.projection_dim = 128
    c.model.force = common.ConfigDict(dict(features=64, num_gaussians=32, cutoff=10.0))

    # Objective: temperature, and α the weight of the force term.
    c.objective = common.ConfigDict(dict(name="3dmrl", temperature=0.2, force_weight=0.1))
    # The reference's InfoNCE (MI/pretrainers/MRL3D.py contrastive_loss): both directions summed,
    # the positive out of the denominator; "symmetric": ½ (a→b + b→a), positive in (CLIP's)
    c.objective.contrastive = "reference"
    # The reference's optimizer holds the 2D and 3D encoders only (MRL3D.py model_param_group):
    # the force head stays at its initialisation. True: train it too (this code's earlier default)
    c.objective.train_force_head = False

    # Optimizer: 3DMRL's Adam, lr 1e-4 for solvation, constant after warm-up.
    c.optim = common.optimizer(learning_rate=1e-4, warmup_steps=500, final_lr_fraction=1.0)
    return common.resize(c, size, SIZES)
