"""experiments/configs/*.py and common.py: every preset passes its entry point's checks; presets compose."""

import importlib
import itertools
import json
from pathlib import Path
from unittest import mock

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


def module(name):
    return importlib.import_module(f"experiments.configs.{name}")


def get(name, size=""):
    return module(name).get_config(size)


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


def overlay_values(overlay, prefix=""):
    """{dotted path: value} of a size overlay or variant (nested dicts, as common.py writes them)."""
    out = {}
    for key, value in overlay.items():
        if isinstance(value, dict):
            out.update(overlay_values(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def applied(config_values, overlay):
    """``config_values`` with ``overlay`` set, as `common.resize` sets it: every field it names, but
    those in a section the config has set to None (Coord's decoder), which it skips."""
    out = dict(config_values)
    for path, value in overlay_values(overlay).items():
        parts = path.split(".")
        if any(
            out.get(".".join(parts[:i])) is None and ".".join(parts[:i]) in out for i in range(1, len(parts))
        ):
            continue
        assert path in out, f"{path}: not a field of the config"
        out[path] = value
    return out


def size_overlays(name):
    """{size: overlay} of a config (a config that reuses another's sizes has no SIZES of its own:
    None for each shared size)."""
    return getattr(module(name), "SIZES", dict.fromkeys(SIZES[1:]))


def variants(name):
    """The '+' variants a config's get_config takes (georecon.py: VARIANTS and ABLATIONS)."""
    return {**getattr(module(name), "VARIANTS", {}), **getattr(module(name), "ABLATIONS", {})}


def presets(name):
    """Every spec of ``--config=<name>.py:<spec>``: paper scale and each size, each alone and with
    each variant."""
    sizes = ("",) + tuple(size_overlays(name))
    return list(sizes) + [f"{size}+{v}" for size in sizes for v in variants(name)]


def check_as_its_entry_point(config):
    """What the config's entry point checks and builds before its first file or data set, done as
    the entry point does it: pretraining (``objective``: experiments/pretrain.py runs
    ``georecon_jax.tasks.<objective.task>.run``), pair fine-tuning (``init_from``:
    experiments/finetune_pairs.py, each split a run of `PairSplitTask` on the recipe-resolved
    config) or QM9/MD17 fine-tuning (experiments/finetune.py). The runner's `check_config` raises a
    `ConfigError` naming each problem; the model (not its parameters), the optimizer and the matmul
    precision are built from the checked config. Returns that config."""
    from georecon_jax.training import runner
    from georecon_jax.training.optimizer import create_optimizer
    from georecon_jax.training.precision import jax_matmul_precision

    checked = []

    def run_experiment(task, config, workdir, **kwargs):  # the runner, up to its first file
        runner.check_config(task, config)
        checked.append(config)

    with mock.patch.object(runner, "run_experiment", run_experiment):
        if "objective" in config:
            from georecon_jax.objectives.registry import get_objective

            objective = get_objective(config)
            task = importlib.import_module(f"georecon_jax.tasks.{objective.task}")
            task.run(config, "unused", objective=objective)
            objective.create_model()
        elif "init_from" in config:
            from georecon_jax.tasks import finetune_pairs

            run_experiment(
                finetune_pairs.PairSplitTask(None, None, None), finetune_pairs.resolve_recipe(config), ""
            )
        else:
            from georecon_jax.models.property import create_property_model
            from georecon_jax.tasks import finetune, property_data

            finetune.run(config, "unused")
            create_property_model(property_data.resolve_config(config).model)  # as its build does
    [resolved] = checked
    # epoch-based runs (3DMRL, pair fine-tuning) count their steps from the data
    create_optimizer(resolved.optim, resolved.get("num_steps") or 1000)
    jax_matmul_precision(resolved.matmul_precision)
    return resolved


# ---------------------------------------------------------------------------------------------
# Every preset runs: it loads, and its entry point accepts it.


@pytest.mark.parametrize("name", NAMES)
def test_every_preset_passes_its_entry_points_checks(name):
    problems = {}
    for spec in presets(name):
        try:
            check_as_its_entry_point(get(name, spec))
        except Exception as e:  # every failing preset named at once
            problems[spec] = f"{type(e).__name__}: {e}"
    assert not problems, problems


@pytest.mark.parametrize(
    "name, override, field",
    [
        ("georecon", "--config.graph.neighbor_list=radius --config.graph.skin=0.1", "graph.skin"),
        ("mrl3d", "--config.optim.learning_rate=-1", "optim.learning_rate"),
        ("finetune_md17", "--config.loss.name=nope", "loss.name"),
        ("mrl_finetune", "--config.num_epochs=0", "num_epochs"),
    ],
    ids=["georecon", "mrl3d", "finetune_md17", "mrl_finetune"],
)
def test_the_entry_point_check_refuses_a_broken_override(name, override, field):
    """The check above is the one that stops a run: on each entry point's path it refuses an
    override that cannot run, naming the field."""
    from georecon_jax.training.runner import ConfigError

    config = load_from_command_line(name, "tiny", *override.split())
    with pytest.raises(ConfigError, match=field):
        check_as_its_entry_point(config)


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


# ---------------------------------------------------------------------------------------------
# Presets compose: a size overlay, then '+' variants in order, then the command line.


@pytest.mark.parametrize("name", [n for n in NAMES if "SIZES" in vars(module(n))])
def test_a_size_changes_only_the_fields_its_overlay_names(name):
    """A size is the paper-scale config with its overlay (shared blocks, then the config's own)
    applied: the fields it changes are fields the overlay names, set to the overlay's values, so a
    config's own fields survive the shared overlays (a config may still fix a field after its
    overlay, as coord.py its num_recon_molecules)."""
    paper = values(get(name))
    for size, overlay in size_overlays(name).items():
        sized, target = values(get(name, size)), applied(paper, overlay)
        assert set(sized) == set(paper), size
        changed = {k: v for k, v in sized.items() if v != paper[k]}
        assert changed and changed == {k: target[k] for k in changed}, size


@pytest.mark.parametrize("name", [n for n in NAMES if variants(n)])
def test_variants_apply_after_the_size_and_in_the_order_given(name):
    """``size+a+b`` is the size's config with variant a, then b applied (b wins where both set a
    field), at every size."""
    named = variants(name)
    for size in ("",) + tuple(size_overlays(name)):
        base = values(get(name, size))
        for v, overlay in named.items():
            assert values(get(name, f"{size}+{v}")) == applied(base, overlay), (size, v)
    for a, b in itertools.permutations(named, 2):
        expected = applied(applied(values(get(name, "tiny")), named[a]), named[b])
        assert values(get(name, f"tiny+{a}+{b}")) == expected, (a, b)


def test_an_unknown_variant_is_refused_naming_the_known_ones():
    with pytest.raises(ValueError, match="'nope'") as excinfo:
        get("mrl3d", "tiny+nope")
    for v in variants("mrl3d"):
        assert v in str(excinfo.value)


@pytest.mark.parametrize("name", [n for n in NAMES if variants(n)])
def test_the_command_line_overrides_a_variants_field(name):
    """``--config.<field>=x`` after ``:tiny+<variant>`` changes that field alone, whatever the
    variant set it to, and the result still passes the entry point's checks."""
    for v, overlay in variants(name).items():
        numeric = {k: x for k, x in overlay_values(overlay).items() if type(x) in (int, float)}
        if not numeric:
            continue
        field, value = next(iter(numeric.items()))
        new = value * 2
        config = load_from_command_line(name, f"tiny+{v}", f"--config.{field}={new}")
        expected = values(get(name, f"tiny+{v}"))
        expected[field] = new
        assert values(config) == expected, (v, field)
        check_as_its_entry_point(config)


def test_a_configs_own_overlay_wins_over_the_shared_ones():
    """`common.sizes` merges nested overlays, later blocks winning field by field, without
    changing the blocks; `common.resize` applies the merged one."""
    shared = {"quick": dict(log_every=25, optim=dict(learning_rate=1e-3, warmup_steps=50))}
    overlays = common.sizes(shared, quick=dict(optim=dict(warmup_steps=7)))
    assert overlays["quick"] == dict(log_every=25, optim=dict(learning_rate=1e-3, warmup_steps=7))
    assert shared["quick"]["optim"]["warmup_steps"] == 50
    c = common.resize(get("finetune_qm9"), "quick", overlays)
    assert (c.log_every, c.optim.learning_rate, c.optim.warmup_steps) == (25, 1e-3, 7)
    assert c.num_steps == get("finetune_qm9").num_steps  # not named: the paper config's


def test_the_optimizer_block_has_one_shape():
    """Every config's ``optim`` has the fields `common.optimizer` makes, of its types; None where a
    recipe fills the field in (pair fine-tuning: the rate by task, plateau by metric)."""
    shape = {k: type(v) for k, v in common.optimizer().items()}
    for name in NAMES:
        for size in SIZES:
            optim = get(name, size).optim
            assert set(optim) == set(shape), (name, size)
            wrong = {k: type(v) for k, v in optim.items() if type(v) not in (shape[k], type(None))}
            assert not wrong, (name, size, wrong)


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


def test_data_name_is_settable_from_the_command_line():
    c = load_from_command_line("finetune_md17", "tiny", "--config.data.name=3BPA 300K")
    assert c.data.name == "3BPA 300K"
    assert load_from_command_line("finetune_md17", "tiny").data.name is None


def test_overlays_do_not_leak_between_calls():
    encoder = {size: dict(fields) for size, fields in common.ENCODER.items()}
    paper = {name: get(name).to_dict() for name in NAMES}
    for name in NAMES:  # a tiny config, then a paper one: no shared state
        get(name, "tiny")
        assert get(name).to_dict() == paper[name], name
    assert common.ENCODER == encoder
    a, b = get("georecon", "tiny"), get("georecon", "tiny")
    features = b.model.encoder.features
    a.model.encoder.features = features + 1
    assert b.model.encoder.features == features


def test_an_overlay_naming_a_missing_field_is_an_error():
    c = get("georecon")
    with pytest.raises(KeyError, match="objective.sigma_mni"):
        common.resize(c, "quick", common.sizes(quick=dict(objective=dict(sigma_mni=0.1))))
    with pytest.raises(KeyError, match="learnin_rate"):
        common.optimizer(learnin_rate=1e-3)


# ---------------------------------------------------------------------------------------------
# What must agree between configs for the code that joins them.


@pytest.mark.parametrize("size", SIZES)
def test_coord_is_georecon_but_for_decoder_and_objective(size):
    coord, georecon = (values(get(name, size)) for name in ("coord", "georecon"))
    differ = {k for k in set(coord) | set(georecon) if coord.get(k) != georecon.get(k)}
    assert differ and all(k.startswith(("model.decoder", "objective.")) for k in differ), differ


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
    those a fine-tuning may set freely (training/transfer.py ENCODER_FREE, e.g. vector_cutoff)."""
    from georecon_jax.training.transfer import ENCODER_FREE

    ours = get(*pretraining).model.encoder.to_dict()
    theirs = get(*finetuning).model.encoder.to_dict()
    for k in ENCODER_FREE:
        ours.pop(k), theirs.pop(k)
    assert ours == theirs, {k: (ours.get(k), theirs.get(k)) for k in set(ours) | set(theirs)}


def pretrained_3dmrl(spec):
    """A 3DMRL checkpoint as `finetune_pairs.load_pretrained` reads it, of a run of mrl3d.py:<spec>
    (its config.json as the runner records it; no parameters needed)."""
    from georecon_jax.training.transfer import PretrainedCheckpoint

    recorded = json.loads(get("mrl3d", spec).to_json_best_effort())
    return PretrainedCheckpoint("/runs/mrl3d", 6, {"params": {}}, False, recorded)


@pytest.mark.parametrize("size", SIZES)
def test_each_3dmrl_pretraining_loads_into_its_fine_tuning_config(size):
    """--config.init_from: each pretraining group of the 3DMRL study (mrl3d.py variant) loads into
    the fine-tuning config variant the study pairs it with (study_mrl.py), at the same size: the
    2D relational model's settings agree (`finetune_pairs.load_pretrained`'s check)."""
    from experiments.configs import study_mrl
    from georecon_jax.tasks import finetune_pairs
    from georecon_jax.training.transfer import PretrainedMismatchError

    for group, variant in study_mrl.GROUPS.items():
        pretrained = pretrained_3dmrl(size + variant)
        finetuning = get("mrl_finetune", size + study_mrl.FINETUNE_VARIANTS[group])
        with mock.patch.object(finetune_pairs, "read_pretrained", lambda path: pretrained):
            assert finetune_pairs.load_pretrained("/runs/mrl3d", finetuning) is pretrained, group
    # the check compares: the tiny pretraining does not load into the paper-scale fine-tuning
    with mock.patch.object(finetune_pairs, "read_pretrained", lambda path: pretrained_3dmrl("tiny")):
        with pytest.raises(PretrainedMismatchError, match="model.relational"):
            finetune_pairs.load_pretrained("/runs/mrl3d", get("mrl_finetune"))
