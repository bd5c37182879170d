"""What the experiment configs share: the blocks they are built from, and the size overlays.

A config file states only what is particular to it and composes the rest from here::

    from experiments.configs import common

    SIZES = common.sizes(common.LOOP_SIZES, common.ENCODER_SIZES,
                         quick=common.schedule(600, 32, every=200, data=dict(...)),
                         tiny=common.schedule(8, 8, every=4, ...))

    def get_config(size=None):
        c = common.training_loop(num_steps=200_000, batch_size=70, eval_every=2000)
        c.optim = common.optimizer()
        ...
        return common.resize(c, size, SIZES)

A config derived from another one starts from the other's paper-scale config and reuses its
sizes (coord.py from georecon.py)::

    def get_config(size=None):
        c = georecon.get_config()
        c.objective.update(name="coord", ...)
        return common.resize(c, size, georecon.SIZES)

Size overlays are nested dicts of the fields a size changes (``dict(model=dict(encoder=dict(
features=64)))``); `sizes` merges them, later blocks winning, and `resize` applies one. An overlay
may only set fields the config has (a typo is a KeyError), except that it skips a section the
config has set to None (Coord has no decoder). Import as ``experiments.configs.common`` (the
config files are loaded by path by ``ml_collections.config_flags`` from the repository root).
"""

from __future__ import annotations

from typing import Mapping, Optional

import ml_collections

ConfigDict = ml_collections.ConfigDict


def optional(field_type: type) -> ml_collections.FieldReference:
    """A field that is None until set, typed so that ``--config.data.limit=100`` parses."""
    return ml_collections.FieldReference(None, field_type=field_type)


# ---------------------------------------------------------------------------------------------
# Blocks at paper scale.
# ---------------------------------------------------------------------------------------------


def training_loop(*, num_steps: int, batch_size: int, eval_every: int) -> ConfigDict:
    """The top level of a config run by the experiment runner (georecon_jax.training.runner)."""
    return ConfigDict(
        dict(
            seed=0,
            num_steps=num_steps,
            batch_size=batch_size,
            num_devices=0,  # 0: all local devices
            log_every=50,
            eval_every=eval_every,
            checkpoint_every=eval_every,
            keep_checkpoints=3,
            max_consecutive_nonfinite=10,  # consecutive non-finite losses before the run stops
            tensorboard=True,
            allow_config_change=False,  # resuming with other model/objective sections is refused
            **accelerator(),
        )
    )


def schedule(num_steps: int, batch_size: int, every: int, **more) -> dict:
    """A size overlay's loop fields: ``num_steps``, ``batch_size``, and an evaluation and a
    checkpoint every ``every`` steps, with ``more`` (other fields of the overlay)."""
    return dict(num_steps=num_steps, batch_size=batch_size, eval_every=every, checkpoint_every=every, **more)


def accelerator() -> dict:
    """Top-level fields every entry point applies before it runs (georecon_jax/training/precision.py):
    ``matmul_precision`` of float32 matrix products ('highest': float32 on TPUs too, which would
    otherwise use bfloat16 passes; 'default', 'high', 'bf16', 'tf32' trade accuracy for speed) and
    ``compilation_cache_dir``, an optional folder for XLA's persistent compilation cache."""
    return dict(matmul_precision="highest", compilation_cache_dir=optional(str))


def optimizer(**overrides) -> ConfigDict:
    """AdamW with warm-up, then cosine decay to ``final_lr_fraction`` or, with
    ``schedule='plateau'``, torchmd-net's ReduceLROnPlateau (training/optimizer.py)."""
    c = ConfigDict(
        dict(
            optimizer="adamw",  # or "sgd" (an update proportional to the gradient: the layout tests)
            learning_rate=4e-4,
            warmup_steps=10_000,
            weight_decay=0.0,
            grad_clip=10.0,
            # "cosine": warm-up, then cosine decay to final_lr_fraction x learning_rate at num_steps.
            # "plateau": torchmd-net's lr_schedule reduce_on_plateau (torchmdnet/module.py
            # configure_optimizers + optimizer_step): warm-up lr x min(1, (k+1)/warmup_steps), then
            # the rate x plateau_factor after plateau_patience evaluations without a validation-loss
            # improvement (torch ReduceLROnPlateau: mode min, threshold 1e-4 rel, cooldown 0), never
            # below min_learning_rate; one step per evaluation. The defaults below are torchmd-net's
            # scripts/train.py (--lr-factor 0.8, --lr-patience 10, --lr-min 1e-6); examples/ET-MD17.yaml
            # uses 0.8, 30, 1e-7 (experiments/configs/finetune_md17.py).
            schedule="cosine",
            final_lr_fraction=0.0,
            plateau_mode="min",  # "max" for a score such as ROC-AUC
            plateau_factor=0.8,
            plateau_patience=10,
            min_learning_rate=1e-6,
            ema_decay=0.0,
        )
    )
    _apply(c, overrides)
    return c


def batch_workers() -> ml_collections.FieldReference:
    """``data.workers``: processes that prepare training batches (georecon_jax.training.prefetch):
    0 = one background thread; N; or "auto" (the host's cores less two, at most 4 per local
    device). docs/parallel.md says what to set on a GPU host and on a TPU VM."""
    return ml_collections.FieldReference(0, field_type=object)


def qm9_data(**extra) -> ConfigDict:
    """The QM9 data section (pretraining and QM9 fine-tuning); ``extra`` adds the job's fields."""
    c = ConfigDict()
    c.dataset = "qm9"
    c.cache_dir = optional(str)  # default $GEORECON_CACHE or ~/.cache/georecon_jax
    c.source_dir = optional(str)  # original QM9 .xyz files
    c.limit = optional(int)  # first N molecules only
    c.split_seed = 0
    c.strict = False
    c.workers = batch_workers()
    c.update(extra)
    return c


def pairs_data(*, max_atoms: int, **extra) -> ConfigDict:
    """The data section of the pair (solute/solvent, drug/drug) jobs: 3DMRL and its fine-tuning.

    Bring your own pair file: ``files`` (a tuple, or ``--config.data.files=a.csv,b.csv``),
    ``smiles_columns`` (two names: ``--config.data.smiles_columns=mol_a,mol_b``), ``label_columns``,
    ``task`` (regression | classification) and ``units``; None or empty: the preset's
    (georecon_jax.data.pairs.PRESETS holds them as named defaults). Fine-tuning: they override
    ``data.preset``'s fields (``data.preset=''``: no preset; the run is named after the file).
    Pretraining: ``data.files`` is one more source besides ``data.presets`` (set
    ``--config.data.presets='()'`` to pretrain on the files alone); the column fields describe
    ``data.files`` only. Relative file paths are read from the working directory, else under
    ``data_root``.

    ``explicit_h``: hydrogens as graph nodes, with their bonds, and as atoms of the 3D conformer.
    None follows Namkyeong/3DMRL (georecon_jax.tasks.pair_data.resolve_explicit_h): always in
    pretraining; in fine-tuning the preset's choice (solvation and DDI: yes; absorption, emission,
    lifetime: no) and yes for files without a preset. ``max_atoms`` counts graph nodes, so
    hydrogens included when they are explicit.
    """
    c = ConfigDict(extra)
    c.data_root = optional(str)  # default ../shared/data or $GEORECON_DATA
    c.cache_dir = optional(str)  # default $GEORECON_CACHE or ~/.cache/georecon_jax
    c.files = optional(object)  # pair CSVs: a tuple or 'a.csv,b.csv' (None: the preset's)
    c.smiles_columns = optional(object)  # the two SMILES columns: a tuple or 'a,b'
    c.label_columns = optional(object)  # label column(s): a tuple or 'y' / 'y1,y2'
    c.task = optional(str)  # regression | classification
    c.units = optional(str)  # of the labels, for the reports (e.g. kcal/mol)
    c.max_pairs = optional(int)  # random subset of N pairs
    c.limit = optional(int)  # first N rows (over all files)
    c.max_atoms = max_atoms  # molecules with more atoms (H included if explicit) are left out, counted
    c.explicit_h = optional(bool)  # hydrogens as graph nodes and 3D atoms (None: the reference's choice)
    c.conformer_seed = 0  # ETKDG seed
    c.workers = batch_workers()
    c.mmff = False  # MMFF-optimise the ETKDG conformer
    c.num_workers = 2  # processes embedding conformers (once; then cached)
    return c


def graph(*, num_buckets: int) -> ConfigDict:
    """Graphs and padding: ``num_buckets`` padded shapes, each compiled once."""
    return ConfigDict(
        dict(
            neighbor_list="all_pairs",  # or "radius" (pairs within cutoff + skin)
            skin=1.0,
            num_buckets=num_buckets,
            # Training batches as an unordered-pair list ("pairs") or as [B, N, N] per-molecule pair
            # tensors ("dense", issue 18: no gathers or scatters). "auto": dense on TPUs when every
            # molecule has at most dense_max_atoms atoms, pairs elsewhere (pairs measured faster:
            # 2.2x on CPU, 1.13x on an H200; benchmarks/results/NOTES.md). Evaluation runs on
            # pairs; both layouts are the same function of the same parameters.
            layout="auto",
            # auto: dense only where every molecule has at most this many atoms (QM9: 29, MD17: 21);
            # larger molecules would make [B, N, N] pair tensors mostly padding
            dense_max_atoms=32,
        )
    )


# The Equivariant Transformer encoder shared by pretraining and fine-tuning (the fine-tuning
# encoder must match the pretrained one). trainable_rbf=False: the exp-normal basis stays fixed,
# as in Coord's pretraining config (pre-training-via-denoising examples/ET-PCQM4MV2.yaml) and
# torchmd-net's ET-QM9.yaml.
ENCODER = {
    "": dict(num_layers=8, features=256, num_heads=8, num_rbf=64),
    # torchmd-net examples/ET-MD17.yaml (and Frad's MD17 fine-tuning): 6 x 128, 32 RBF
    "md17": dict(num_layers=6, features=128, num_heads=8, num_rbf=32),
    "quick": dict(num_layers=3, features=64, num_heads=4, num_rbf=32),
    "tiny": dict(num_layers=2, features=16, num_heads=2, num_rbf=8),
}


def encoder(size: str = "", **overrides) -> ConfigDict:
    """The ET encoder at a size of `ENCODER`, 5 Å cutoff.

    vec_norm: 'whitened' puts pre-training-via-denoising's EquivariantLayerNorm on the final
    vectors (Coord's ``--layernorm-on-vec whitened`` in pretraining and fine-tuning, README of
    shehzaidi/pre-training-via-denoising); 'none' is torchmd-net's plain ET.
    embedding_init: 'normal' N(0, 1), torch's nn.Embedding (torchmd_et.py); 'scaled' N(0, 1/F).
    vector_cutoff: torchmd-net's option (models/et.py): the cutoff weighs the values instead of the
    attention, for a potential continuous at the cutoff. False, as pre-training-via-denoising's ET
    (Coord, GeoRecon, QM9); finetune_md17.py sets True, as torchmd-net's ET-MD17.yaml. The same
    parameters either way: a pretrained encoder fine-tunes with either.
    """
    c = ConfigDict(
        dict(
            ENCODER[size],
            cutoff=5.0,
            max_z=100,
            trainable_rbf=False,
            vec_norm="whitened",
            embedding_init="normal",
            vector_cutoff=False,
        )
    )
    _apply(c, overrides)
    return c


def relational(**extra) -> ConfigDict:
    """The CIGIN relational (2D) model; fine-tuning must use the pretraining's sizes and form."""
    return ConfigDict(
        {
            "features": 64,
            "num_steps": 3,
            "set2set_steps": 2,
            # "reference": 3DMRL's MI/models_2d/CIGIN.py and MI/layers/MPNN.py (NNConv + message
            # layer + input skip, L2-normalised atoms, dot-product interaction map); "edge_mlp_gru":
            # this project's earlier form (edge-MLP messages + GRU, tanh interaction map), which runs
            # saved without the field resume with (georecon_jax.models.relational).
            "architecture": "reference",
            **extra,
        }
    )


# ---------------------------------------------------------------------------------------------
# Size overlays.
# ---------------------------------------------------------------------------------------------

# The training loop: 'quick' logs more often and trains its smaller model at a higher learning
# rate; 'tiny' (tests) logs every other step and writes no TensorBoard files.
LOOP_SIZES = {
    "quick": dict(log_every=25, optim=dict(learning_rate=1e-3, warmup_steps=50)),
    "tiny": dict(log_every=2, tensorboard=False, optim=dict(learning_rate=1e-3, warmup_steps=2)),
}

# The ET encoder and its graphs: tiny compiles a single padded shape.
ENCODER_SIZES = {
    "quick": dict(model=dict(encoder=ENCODER["quick"])),
    "tiny": dict(graph=dict(num_buckets=1), model=dict(encoder=ENCODER["tiny"])),
}


def _merge(a: Mapping, b: Mapping) -> dict:
    """``a`` updated by ``b``, nested dicts merged (neither is modified)."""
    out = dict(a)
    for key, value in b.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), Mapping):
            value = _merge(out[key], value)
        out[key] = value
    return out


def sizes(*blocks: Mapping[str, Mapping], **own: Mapping) -> dict:
    """The size overlays of a config: shared ``blocks`` (e.g. `LOOP_SIZES`) then its ``own``
    (``quick=dict(...), tiny=dict(...)``), merged in that order, later ones winning."""
    out: dict = {}
    for block in blocks + (own,):
        for name, overlay in block.items():
            out[name] = _merge(out.get(name, {}), overlay)
    return out


def _apply(section: ConfigDict, overlay: Mapping, path: str = "") -> None:
    for key, value in overlay.items():
        if key not in section:
            raise KeyError(f"{path}{key}: no such field to set (a typo?)")
        if isinstance(value, Mapping):
            if section[key] is not None:  # None: a section this config has removed
                _apply(section[key], value, f"{path}{key}.")
        else:
            section[key] = value  # keeps FieldReferences (typed None fields) in place


def check_size(size: Optional[str], valid) -> str:
    """``size`` ('' for None), or a ValueError naming the valid sizes."""
    size = size or ""
    names = ("",) + tuple(n for n in valid if n)
    if size not in names:
        raise ValueError(
            f"unknown config size {size!r}: use one of "
            + ", ".join(repr(n) for n in names)
            + " ('' is paper scale)"
        )
    return size


def with_variants(spec: Optional[str], build, variants: Mapping[str, Mapping], what: str) -> ConfigDict:
    """``build(size)`` with the '+'-separated ``variants`` of ``spec`` ('quick+ddi') applied in
    order; an unknown variant is a ValueError naming the known ones (``what``: e.g. '3DMRL')."""
    size, *names = (spec or "").split("+")
    for v in names:
        if v not in variants:
            raise ValueError(f"unknown {what} variant {v!r}: use one of {', '.join(variants)}")
    c = build(size)
    for v in names:
        _apply(c, variants[v])
    return c


def resize(c: ConfigDict, size: Optional[str], overlays: Mapping[str, Mapping]) -> ConfigDict:
    """``c`` (paper scale) shrunk in place to ``size``, one of ``overlays`` (see `sizes`);
    '' or None leaves it as it is. An unknown size is a ValueError naming the valid ones."""
    size = check_size(size, overlays)
    if size:
        _apply(c, overlays[size])
    return c
