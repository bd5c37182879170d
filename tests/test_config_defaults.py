"""One home for every config default: the config files (experiments/configs, composed from
common.py) hold the current defaults, `training.loop.ADDED_FIELDS` the values that mean an older
run's behaviour (filled into a saved config where it is read, `complete_saved_config`), and the
library reads fields directly: no ``.get("field", default)`` that writes a default a second time."""

import ast
import importlib
import json

import pytest

from conftest import ROOT
from georecon_jax.training.loop import ADDED_FIELDS, complete_saved_config, flatten_dict, record_config

PACKAGE = ROOT / "georecon_jax"

# The ``.get("<key>", <default>)`` calls the library keeps, none of them on a config: (file, key)
# -> what is read.
ALLOWED = {
    ("interop/torchmd.py", "cutoff_lower"): "torchmd-net's hyper-parameters (its defaults)",
    ("interop/torchmd.py", "output_model"): "torchmd-net's hyper-parameters (its defaults)",
    ("interop/torchmd.py", "enable"): "torchmd-net's hyper-parameters (its defaults)",
    ("interop/torchmd.py", "trainable_rbf"): "torchmd-net's hyper-parameters (its defaults)",
    ("interop/torchmd.py", "precision"): "torchmd-net's hyper-parameters (its defaults)",
    ("training/optimizer.py", "params"): "a parameter tree, with or without its 'params' level",
    ("training/transfer.py", "params"): "a restored checkpoint, with or without its 'params' level",
    ("tasks/inference.py", "energy_offset"): "target_stats.json (QM9 statistics have no offset)",
    ("tasks/inference.py", "checkpoint"): "an export's meta (a file has no checkpoint name)",
    ("objectives/noise.py", "source"): "noise_normaliser.json (the source is a note)",
    ("models/et_reference.py", "bias"): "a torch layer's weights (a Linear without a bias)",
    ("data/qm9.py", "skipped"): "the QM9 cache's meta (caches written before the count)",
    ("tasks/evaluation.py", "num_molecules"): "a pretraining run's summary.json, in a message",
    ("plots.py", "n_pairs_same_size"): "the z diagnostic's results (older summaries lack it)",
    ("studies/zvariants.py", "n_pairs_same_size"): "the z diagnostic's results (older summaries lack it)",
    ("studies/zvariants.py", "z_diagnostic"): "a pretraining cell's summary.json (objectives without one)",
    ("studies/zvariants.py", "sampler"): "a pretraining cell's summary.json (written before the field)",
    ("studies/geo.py", "overlays"): "an arm's spec in experiments/configs/study.py ARMS (a plain dict)",
    ("studies/geo.py", "normaliser"): "an arm's spec: the study's normaliser unless the arm names one",
    ("studies/geo.py", "finetune"): "an arm's spec: its fine-tuning flags, none unless it names some",
    ("studies/geo.py", "extra_steps"): "an arm's spec: its steps beyond the preset's, none unless named",
    ("plots.py", "fmt"): "a plotted series' style (a dict of matplotlib arguments)",
    ("plots.py", "ms"): "a plotted series' style (a dict of matplotlib arguments)",
}

CONFIGS = [
    "georecon",
    "coord",
    "coord_ladder",
    "mrl3d",
    "finetune_qm9",
    "finetune_md17",
    "finetune_md17_frad",
    "mrl_finetune",
]


def get_calls_with_default(root=PACKAGE):
    """(file relative to the package, key, line) of every ``x.get("<key>", <default>)``."""
    for path in sorted(root.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if not (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr == "get"
                and node.args
                and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)
                and ast.unparse(node.func.value) != "os.environ"  # environment variables
            ):
                continue
            if len(node.args) + len(node.keywords) >= 2:
                yield str(path.relative_to(root)), node.args[0].value, node.lineno


def test_no_config_default_is_written_twice():
    found = list(get_calls_with_default())
    unexpected = [
        f"georecon_jax/{f}:{line}: .get({key!r}, ...)" for f, key, line in found if (f, key) not in ALLOWED
    ]
    assert not unexpected, (
        "a default written a second time: read the field directly (its default belongs in "
        "experiments/configs; an older run's value in training.loop.ADDED_FIELDS):\n" + "\n".join(unexpected)
    )
    stale = set(ALLOWED) - {(f, key) for f, key, _ in found}
    assert not stale, f"allowed .get calls that are gone: {sorted(stale)}"


def test_the_scan_sees_a_default(tmp_path):
    (tmp_path / "m.py").write_text(
        'import os\ndef f(cfg):\n    return cfg.get("layout", "pairs"), cfg.get("x"), os.environ.get("A", "")\n'
    )
    assert list(get_calls_with_default(tmp_path)) == [("m.py", "layout", 3)]


def _config(name):
    return importlib.import_module(f"experiments.configs.{name}").get_config()


def test_every_added_field_is_a_field_of_a_config():
    fields = set()
    for name in CONFIGS:
        fields |= set(flatten_dict(json.loads(_config(name).to_json_best_effort())))
    assert not sorted(set(ADDED_FIELDS) - fields)


def test_a_saved_config_gets_the_fields_added_since_in_the_sections_it_has():
    saved = {"model": {"encoder": {"features": 8}}, "graph": {"layout": "auto"}, "seed": 0}
    out = complete_saved_config(saved)
    assert out["model"]["encoder"]["vector_cutoff"] is False
    assert out["model"]["encoder"]["vec_norm"] == "none"  # the ET before the option
    assert out["graph"] == {"layout": "auto", "dense_max_atoms": 32}  # a saved value stays
    assert "environment" not in out and "relational" not in out["model"]  # no section is made
    assert saved == {"model": {"encoder": {"features": 8}}, "graph": {"layout": "auto"}, "seed": 0}


@pytest.mark.parametrize("name", ["georecon", "finetune_qm9", "mrl3d", "mrl_finetune"])
def test_a_run_saved_before_the_added_fields_resumes(tmp_path, name):
    """A config.json without the added fields compares equal to today's config when today's
    holds the values that meant that run's behaviour."""
    config = _config(name)
    new = json.loads(config.to_json_best_effort())
    old = json.loads(json.dumps(new))
    for field, value in ADDED_FIELDS.items():
        *path, key = field.split(".")
        section = old
        for part in path:
            section = section.get(part) if isinstance(section, dict) else None
        if isinstance(section, dict) and key in section:
            del section[key]
            target = config
            for part in path:
                target = target[part]
            target[key] = value
    (tmp_path / "config.json").write_text(json.dumps(old))
    record_config(config, str(tmp_path), compare_sections=("model", "objective", "data", "optim"))
