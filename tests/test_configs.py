"""The experiment configs compose from experiments/configs/common.py: every config at every size,
the size overlays, the fields particular to each config, and command-line overrides."""

import importlib
from pathlib import Path

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

from experiments.configs import common

CONFIG_DIR = Path(__file__).resolve().parents[1] / "experiments" / "configs"
# study.py and study_mrl.py configure sweeps of these configs (presets), not runs: test_study*.py
NAMES = tuple(
    sorted(
        p.stem for p in CONFIG_DIR.glob("*.py") if p.stem not in ("__init__", "common", "study", "study_mrl")
    )
)
SIZES = ("", "quick", "tiny")
ET_CONFIGS = (
    "georecon",
    "coord",
    "finetune_qm9",
    "finetune_md17",
    "finetune_md17_frad",
)  # ET encoder, training loop


def get(name, size=""):
    return importlib.import_module(f"experiments.configs.{name}").get_config(size)


def leaves(c, prefix=""):
    """{dotted path: (value, FieldReference or None)} of a ConfigDict."""
    out = {}
    for key, raw in c._fields.items():
        path = f"{prefix}{key}"
        if isinstance(raw, ml_collections.ConfigDict):
            out.update(leaves(raw, path + "."))
        else:
            ref = raw if isinstance(raw, ml_collections.FieldReference) else None
            out[path] = (raw if ref is None else ref.get(), ref)
    return out


def values(c):
    """{dotted path: value} of a ConfigDict."""
    return {k: v for k, (v, _) in leaves(c).items()}


def load_from_command_line(name, size="", *args):
    """As experiments/pretrain.py and finetune.py do: config_flags loads the file by its path."""
    suffix = f":{size}" if size else ""
    argv = ["prog", f"--config={CONFIG_DIR / name}.py{suffix}", *args]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file(
        "config", None, "", flag_values=flag_values, lock_config=True, sys_argv=argv
    )  # the overrides are read from it
    flag_values(argv)
    return flag_values.config


def test_every_config_file_is_tested():
    assert set(NAMES) >= {"georecon", "coord", "finetune_qm9", "finetune_md17", "mrl3d", "mrl_finetune"}


@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("name", NAMES)
def test_every_config_loads_at_every_size_by_path_as_config_flags_does(name, size):
    by_path = load_from_command_line(name, size)
    assert by_path.to_dict() == get(name, size).to_dict()
    assert by_path.is_locked


@pytest.mark.parametrize("name", NAMES)
def test_no_size_and_empty_size_are_paper_scale(name):
    module = importlib.import_module(f"experiments.configs.{name}")
    assert (
        module.get_config().to_dict() == module.get_config("").to_dict() == module.get_config(None).to_dict()
    )


@pytest.mark.parametrize("name", NAMES)
def test_unknown_size_is_refused_naming_the_valid_ones(name):
    with pytest.raises(ValueError) as excinfo:
        get(name, "huge")
    message = str(excinfo.value)
    assert "'huge'" in message
    for size in SIZES:
        assert repr(size) in message


@pytest.mark.parametrize("name", ET_CONFIGS)
def test_sizes_shrink_the_encoder_and_the_run(name):
    paper, quick, tiny = (get(name, s) for s in SIZES)
    for field in ("num_layers", "features", "num_rbf"):  # MD17's paper RBF count is quick's (32)
        assert tiny.model.encoder[field] < quick.model.encoder[field] <= paper.model.encoder[field], field
    assert quick.model.encoder.features < paper.model.encoder.features
    assert tiny.num_steps < quick.num_steps < paper.num_steps
    assert tiny.batch_size < quick.batch_size <= paper.batch_size  # torchmd-net MD17: batch 8 at paper scale
    assert tiny.log_every < quick.log_every < paper.log_every
    assert (tiny.tensorboard, quick.tensorboard, paper.tensorboard) == (False, True, True)
    assert tiny.graph.num_buckets == 1 < paper.graph.num_buckets
    vec_norm = paper.model.encoder.vec_norm  # MD17: none (torchmd-net 3.x); the rest: whitened
    vector_cutoff = paper.model.encoder.vector_cutoff  # MD17: True (ET-MD17.yaml); the rest: False
    assert vector_cutoff == name.startswith("finetune_md17"), name
    same = dict(vec_norm=vec_norm, vector_cutoff=vector_cutoff)
    assert tiny.model.encoder.to_dict() == common.encoder("tiny", **same).to_dict()
    assert quick.model.encoder.to_dict() == common.encoder("quick", **same).to_dict()
    for c in (paper, quick, tiny):
        assert c.checkpoint_every == c.eval_every
        assert c.model.encoder.trainable_rbf is False and c.model.encoder.cutoff == 5.0


def test_sizes_shrink_the_pair_configs():
    paper, quick, tiny = (get("mrl3d", s) for s in SIZES)
    assert tiny.num_steps < quick.num_steps < paper.num_steps
    assert (
        tiny.model.encoder3d.num_interactions
        < quick.model.encoder3d.num_interactions
        < paper.model.encoder3d.num_interactions
    )
    assert tiny.model.relational.features < paper.model.relational.features
    assert tiny.data.limit == 60 and paper.data.limit is None
    paper, quick, tiny = (get("mrl_finetune", s) for s in SIZES)
    assert tiny.num_epochs < quick.num_epochs < paper.num_epochs
    assert tiny.model.features < paper.model.features
    assert tiny.max_splits == quick.max_splits == 1 and paper.max_splits == 0


@pytest.mark.parametrize("size", SIZES)
def test_each_config_keeps_its_own_fields_through_the_overlays(size):
    coord = get("coord", size)
    assert coord.model.decoder is None
    assert (coord.objective.name, coord.objective.schedule) == ("coord", "fixed")
    assert coord.objective.sigma_min == coord.objective.sigma_max == 0.04

    md17 = get("finetune_md17", size)
    assert (md17.task, md17.loss.name) == ("md17", "mse")
    assert (md17.loss.energy_weight, md17.loss.force_weight, md17.loss.denoise_weight) == (0.2, 0.8, 0.0)
    assert md17.optim.learning_rate == 1e-3
    assert md17.data.dataset == "md17" and "num_train_labels" not in md17.data

    mrl3d = get("mrl3d", size)
    assert mrl3d.optim.final_lr_fraction == 1.0 and mrl3d.objective.name == "3dmrl"
    assert get("georecon", size).objective.schedule == "geometric"


def test_a_configs_own_overlay_wins_over_the_shared_ones():
    assert common.LOOP_SIZES["quick"]["optim"]["warmup_steps"] == 50
    assert get("finetune_qm9", "quick").optim.warmup_steps == 100
    assert get("finetune_md17", "quick").optim.warmup_steps == 50
    assert get("mrl3d", "quick").log_every == 10 and get("mrl3d", "quick").optim.learning_rate == 5e-4
    assert get("finetune_md17", "tiny").molecule == "ethanol"
    assert get("finetune_md17", "").model.encoder.features == 128  # Frad's, not finetune_qm9's 256


@pytest.mark.parametrize("size", SIZES)
def test_coord_is_georecon_but_for_decoder_and_objective(size):
    coord, georecon = (values(get(name, size)) for name in ("coord", "georecon"))
    differ = {k for k in set(coord) | set(georecon) if coord.get(k) != georecon.get(k)}
    assert differ and all(k.startswith(("model.decoder", "objective.")) for k in differ), differ


def test_finetune_md17_inherits_finetune_qm9_beyond_its_own_fields():
    md17, qm9 = get("finetune_md17"), get("finetune_qm9")
    assert md17.model.head.hidden == qm9.model.head.hidden
    assert md17.loss.denoise_sigma == qm9.loss.denoise_sigma
    assert md17.optim.grad_clip == qm9.optim.grad_clip and md17.evaluate_at_end is True


def test_the_optimizer_block_has_one_shape():
    shape = {k: type(v) for k, v in common.optimizer().items()}
    for name in NAMES:
        for size in SIZES:
            optim = get(name, size).optim
            expected = dict(shape)
            if name == "mrl_finetune":  # the rate by task, plateau by metric
                expected.update(plateau_mode=type(None))
                if size != "tiny":
                    expected.update(learning_rate=type(None))
            assert {k: type(v) for k, v in optim.items()} == expected, (name, size)


@pytest.mark.parametrize("name", NAMES)
def test_unset_fields_are_typed_so_the_command_line_can_set_them(name):
    c = get(name, "tiny")
    unset = {k: ref for k, (value, ref) in leaves(c).items() if value is None and k != "model.decoder"}
    assert unset, "every config has optional (None) fields"
    c.lock()
    for path, ref in unset.items():
        kind = ref.get_type() if ref is not None else None
        assert kind in (int, str, float, bool, object), path
        section = c
        for key in path.split(".")[:-1]:
            section = section[key]
        last = path.split(".")[-1]
        if kind is object:  # lists of names or paths: a tuple, or a comma-separated string
            section[last] = ("a", "b")
            section[last] = "a,b"
            continue
        section[last] = {int: 5, str: "x", float: 0.5, bool: True}[kind]
        with pytest.raises(TypeError):
            section[last] = [1] if kind is not str else 5


@pytest.mark.parametrize(
    "name,size,args,expected",
    [
        ("georecon", "tiny", ["--config.data.limit=100"], {"data.limit": 100}),
        (
            "finetune_qm9",
            "quick",
            ["--config.pretrained=runs/a", "--config.data.num_test_molecules=7"],
            {"pretrained": "runs/a", "data.num_test_molecules": 7},
        ),
        (
            "finetune_md17",
            "",
            ["--config.data.train_file=a.npz", "--config.molecule=uracil"],
            {"data.train_file": "a.npz", "molecule": "uracil"},
        ),
        ("mrl3d", "tiny", ["--config.data.max_pairs=10"], {"data.max_pairs": 10}),
    ],
)
def test_command_line_overrides_reach_unset_fields(name, size, args, expected):
    c = load_from_command_line(name, size, *args)
    got = values(c)
    assert {k: got[k] for k in expected} == expected


def test_overlays_do_not_leak_between_calls():
    encoder = {size: dict(fields) for size, fields in common.ENCODER.items()}
    paper = {name: get(name).to_dict() for name in NAMES}
    for name in NAMES:  # a tiny config, then a paper one: no shared state
        get(name, "tiny")
        assert get(name).to_dict() == paper[name], name
    assert common.ENCODER == encoder
    a, b = get("georecon", "tiny"), get("georecon", "tiny")
    a.model.encoder.features = 3
    assert b.model.encoder.features == 16


def test_an_overlay_naming_a_missing_field_is_an_error():
    c = get("georecon")
    with pytest.raises(KeyError, match="objective.sigma_mni"):
        common.resize(c, "quick", common.sizes(quick=dict(objective=dict(sigma_mni=0.1))))
    with pytest.raises(KeyError, match="learnin_rate"):
        common.optimizer(learnin_rate=1e-3)


@pytest.mark.parametrize(
    "pretraining, finetuning",
    [
        (("georecon", ""), ("finetune_qm9", "")),
        (("coord", ""), ("finetune_qm9", "")),
        (("georecon", "md17"), ("finetune_md17", "")),
        (("coord", "md17"), ("finetune_md17", "")),
        (("georecon", "md17"), ("finetune_md17_frad", "")),
        (("coord", "tiny"), ("finetune_qm9", "tiny")),
    ],
)
def test_pretraining_and_finetuning_encoders_agree_at_the_default_sizes(pretraining, finetuning):
    """--config.pretrained loads with no edits: every encoder field is the same (issue 14), but
    those a fine-tuning may set freely (training/transfer.py ENCODER_FREE: vector_cutoff, True in
    the MD17 fine-tunings as torchmd-net's ET-MD17.yaml, False in pretraining as
    pre-training-via-denoising)."""
    from georecon_jax.training.transfer import ENCODER_FREE

    ours = get(*pretraining).model.encoder.to_dict()
    theirs = get(*finetuning).model.encoder.to_dict()
    assert ours["vector_cutoff"] is False
    assert theirs["vector_cutoff"] is finetuning[0].startswith("finetune_md17")
    for k in ENCODER_FREE:
        ours.pop(k), theirs.pop(k)
    assert ours == theirs, {k: (ours.get(k), theirs.get(k)) for k in set(ours) | set(theirs)}
