"""GeoRecon pretraining on QM9.

  --config=experiments/configs/georecon.py         paper scale (8 layers x 256, 64 RBF, 5 Å)
  --config=experiments/configs/georecon.py:quick   2 CPU cores, a few minutes (README quick start)
  --config=experiments/configs/georecon.py:tiny    seconds; used by the tests
  --config=experiments/configs/georecon.py:md17    paper-scale run with the MD17 fine-tuning encoder
                                                   (6 x 128, 32 RBF: finetune_md17*.py load it)
  --config=experiments/configs/georecon.py:quick+frame_free_topology
                                                   a size, then objective variants (`VARIANTS`)
                                                   or the study's ablations (`ABLATIONS`)

Any field can be overridden on the command line, e.g. --config.optim.learning_rate=2e-4.
Shared blocks and the size overlays: common.py. Coord (coord.py) reuses this file's sizes.
"""

from experiments.configs import common

SIZES = common.sizes(
    common.LOOP_SIZES,
    common.ENCODER_SIZES,
    quick=common.schedule(
        600,
        32,
        every=200,
        data=dict(num_eval_molecules=256),
        model=dict(decoder=dict(code_dim=64, num_heads=4, num_rbf=16)),
        objective=dict(num_sampling_steps=30, num_recon_molecules=64),
    ),
    # The encoder of torchmd-net's ET-MD17.yaml, so that finetune_md17.py loads the checkpoint.
    md17=dict(model=dict(encoder=dict(common.ENCODER["md17"], vec_norm="none"))),
    tiny=common.schedule(
        8,
        8,
        every=4,
        data=dict(limit=400, num_eval_molecules=16),
        model=dict(decoder=dict(code_dim=16, num_heads=2, num_rbf=8)),
        objective=dict(num_sampling_steps=4, num_recon_molecules=8),
    ),
)


# Objective variants in which reconstruction may have to go through z (issue 20; README, "Does the
# decoder use the graph code?"). The paper's caption is the default; a variant is added to a size
# with '+': georecon.py:quick+frame_free_topology. Each entry says why it might make z necessary.
WIDE_SIGMAS = (0.01, 0.1, 0.3, 0.6, 1.0, 2.0, 4.0, 8.0)  # Å, the diagnostic's σ up to σ_max = 10
# The variants' reconstruction re-noises at each σ level: for the EDM variants it beats DDIM in every
# row of results/z_variants_renoise (the caption's ε-decoder is better served by DDIM).
_LARGE_SIGMA = dict(sigma_max=10.0, diagnostic_sigmas=WIDE_SIGMAS, sampler="renoise")
VARIANTS = dict(
    # ε-MSE on the caption's decoder, noise up to 10 Å (beyond a QM9 molecule's size) with EDM
    # preconditioning: the large-σ terms now weigh as much as the small ones.
    edm=dict(objective=dict(parametrization="edm", **_LARGE_SIGMA)),
    # + a frame-free loss on the interatomic distances of x̂0: at σ beyond the molecule's size the
    # decoder no longer has to guess the noise's frame, only the molecule's internal geometry.
    frame_free=dict(objective=dict(parametrization="edm", loss="x0_distance", **_LARGE_SIGMA)),
    # + the clean molecule's bonds in the decoder: it knows which atom is which, so the distance
    # target is well posed; the conformation (angles, torsions, non-bonded distances) is z's.
    frame_free_topology=dict(
        objective=dict(parametrization="edm", loss="x0_distance", **_LARGE_SIGMA),
        model=dict(decoder=dict(topology=True)),
    ),
    # + a bottleneck: the decoder does not see the encoder's features of the perturbed structure,
    # only atom types, bonds, the perturbed positions (two attention layers) and z.
    bottleneck_topology=dict(
        objective=dict(parametrization="edm", loss="x0_distance", **_LARGE_SIGMA),
        model=dict(decoder=dict(topology=True, input="atoms", num_layers=2)),
    ),
    # the sorted distances of x̂0 against the clean ones (a 1-D optimal transport per molecule):
    # no bonds and no atom correspondence needed, only the molecule's shape, which at σ beyond its
    # size only z knows
    spectrum=dict(objective=dict(parametrization="edm", loss="x0_spectrum", **_LARGE_SIGMA)),
    # + the bottleneck decoder (atom types, perturbed positions, z)
    bottleneck_spectrum=dict(
        objective=dict(parametrization="edm", loss="x0_spectrum", **_LARGE_SIGMA),
        model=dict(decoder=dict(input="atoms", num_layers=2)),
    ),
    # the same with a Kabsch-aligned coordinate loss instead of distances
    kabsch_topology=dict(
        objective=dict(parametrization="edm", loss="x0_kabsch", **_LARGE_SIGMA),
        model=dict(decoder=dict(topology=True, input="atoms", num_layers=2)),
    ),
)


# The ablations of the GeoRecon study (issue 15; experiments/study.py): the caption's objective with
# one setting changed. The paper names the reconstruction noise scale and the decoder depth.
ABLATIONS = dict(
    sigma_small=dict(objective=dict(sigma_max=0.5)),  # Å (caption: 2)
    sigma_large=dict(objective=dict(sigma_max=10.0, diagnostic_sigmas=WIDE_SIGMAS)),  # Å
    fixed_schedule=dict(objective=dict(schedule="fixed")),  # every molecule at σ_max
    deep_decoder=dict(model=dict(decoder=dict(num_layers=3))),  # (caption: 1)
    noisy_code=dict(objective=dict(code_source="noisy")),  # z from the perturbed structure
    narrow_code=dict(model=dict(decoder=dict(code_dim=8))),  # a pooled width of 8
)


def get_config(size=None):
    """``size``: '' (paper scale), a name of `SIZES`, and optionally '+'-separated `VARIANTS`."""
    return common.with_variants(size, _config, {**VARIANTS, **ABLATIONS}, "GeoRecon")


def _config(size=None):
    # Training loop; batch 70 is Coord's pretraining batch size.
    c = common.training_loop(num_steps=200_000, batch_size=70, eval_every=2000)
    c.micro_batches = 0  # per device and step, run one after another; 0: automatic (CPU:
    # >= 4 molecules each, keeps per-edge tensors in cache; else 1)

    # Data, graphs and padding (5 buckets: ~6 % padding on QM9).
    c.data = common.qm9_data(num_eval_molecules=2000)
    # dataset='sdf': pretrain on the 3D structures of an SDF file instead (PCQM4Mv2:
    # python -m data_prep.pcqm4mv2), with a random validation part of this fraction
    c.data.sdf_path = common.optional(str)
    c.data.validation_fraction = 0.05
    # records per chunk of the streaming conversion into the store (its RAM: one chunk; a resume
    # re-reads at most one): georecon_jax/data/store.py
    c.data.store_chunk_size = 50_000
    c.graph = common.graph(num_buckets=5)

    # Model.
    c.model = common.ConfigDict()
    c.model.encoder = common.encoder()
    c.model.decoder = common.ConfigDict(
        dict(
            code_dim=256,
            num_layers=1,
            num_heads=8,
            num_rbf=32,
            input="encoder",  # the caption: the shared encoder's features of the perturbed structure;
            # "atoms": atom types only (a bottleneck)
            topology=False,  # True: the clean molecule's bonds (not distances) reach the decoder
            topology_layers=3,  # message-passing rounds over the bonds
        )
    )

    # Objective.
    c.objective = common.ConfigDict()
    c.objective.name = "georecon"
    c.objective.schedule = "geometric"  # log-uniform σ per molecule; "fixed" uses sigma_max
    c.objective.sigma_min = 0.01  # Å
    c.objective.sigma_max = 2.0  # Å
    c.objective.parametrization = "eps"  # the decoder predicts ε (caption); "edm": x̂0 preconditioned
    c.objective.loss = "eps_mse"  # (caption); "x0_distance" | "x0_kabsch" | "x0_spectrum": frame-free
    # errors of x̂0 (all pairs | after alignment | sorted distances)
    # where z comes from in training: "clean" (the caption: the unperturbed molecule) | "noisy"
    # (an ablation of issue 15: the encoder's features of the perturbed input the decoder sees;
    # reconstruction and the z diagnostic still take z from the clean molecule, the σ → 0 limit)
    c.objective.code_source = "clean"
    c.objective.sigma_data = 1.5  # Å, EDM's data scale (QM9 coordinates' per-axis spread)
    c.objective.node_denoise_weight = 0.1
    c.objective.clean_weight = 0.1
    c.objective.num_sampling_steps = 50
    # how the reconstruction walks down the σ ladder: "ddim" (deterministic, puts ε̂ back) or
    # "renoise" (fresh noise at each level; for decoders trained on frame-free or label-free losses)
    c.objective.sampler = "ddim"
    c.objective.num_recon_molecules = 256  # held-out molecules rebuilt from z at the end
    # z diagnostic on those molecules (summary.json "z_diagnostic", z_diagnostic.png): decoder
    # ε-MSE with own / another molecule's / zero code at each σ (Å); () skips that part
    c.objective.diagnostic_sigmas = (0.01, 0.04, 0.1, 0.3, 0.6, 1.0, 1.5, 2.0)

    # Optimizer.
    c.optim = common.optimizer()
    return common.resize(c, size, SIZES)
