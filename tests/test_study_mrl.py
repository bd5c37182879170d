"""The 3DMRL study (experiments/mrl.py): its cells are the single commands wired together,
a cell counts as finished only when every split ended, and its paired comparison is right."""

import json
import os

import numpy as np
import pytest

from experiments import study
from experiments.configs import mrl3d, mrl_finetune
from experiments.configs import study_mrl as study_config
from georecon_jax.studies import mrl


def _flag(cmd, name):
    hits = [a.split("=", 1)[1] for a in cmd if a.startswith(f"--config.{name}=")]
    return hits[-1] if hits else None


@pytest.mark.parametrize("preset", ["cpu", "paper"])
def test_cells_wire_each_task_to_its_groups_pretraining(tmp_path, preset):
    """Every pretrained arm fine-tunes from the pretraining of its task's group (solvation,
    chromophore, DDI), of the same arm and seed; scratch from nothing; the trained-force arm
    pretrains with the force head trained and the reference arm without; every config spec loads;
    DDI cells run the molecule/scaffold split, regression cells 5-fold CV of the cell's seed."""
    c = study_config.get_config(preset)
    cells = mrl.build_cells(c, str(tmp_path), study.MRL3D)
    by_name = {x.name: x for x in cells}
    assert len(by_name) == len(cells)
    n_pre = sum(1 for x in cells if x.kind == "pretrain")
    groups = {study_config.TASKS[t][0] for t in c.tasks}
    assert n_pre == len(groups) * 2 * len(c.seeds)  # groups x 2 pretrained arms x seeds
    assert len(cells) - n_pre == len(c.tasks) * len(c.arms) * len(c.seeds)
    for cell in cells:
        spec = next(a for a in cell.cmd if a.startswith("--config=")).split(":", 1)[1]
        assert _flag(cell.cmd, "seed") == str(cell.seed)
        if cell.kind == "pretrain":
            cfg = mrl3d.get_config(spec)
            group = cell.name.split("/")[1]
            assert (
                cfg.data.presets
                == {
                    "solvation": ("combisolv",),
                    "chromophore": ("absorption", "emission"),
                    "ddi": ("chchminer",),
                }[group]
            )
            trained = _flag(cell.cmd, "objective.train_force_head")
            assert (trained == "True") == (cell.arm == "3dmrl_trained_force")
            if preset == "paper":
                assert _flag(cell.cmd, "num_steps") is None and cfg.num_epochs == 100
            continue
        mrl_finetune.get_config(spec)
        group, preset_name, split = study_config.TASKS[cell.task]
        assert _flag(cell.cmd, "data.preset") == preset_name and _flag(cell.cmd, "split") == split
        seeds = _flag(cell.cmd, "seeds")
        if split == "cv":
            assert seeds == f"({cell.seed},)" and _flag(cell.cmd, "num_folds") == "5"
        else:
            assert seeds.startswith(f"({cell.seed},") and len(eval(seeds)) == c.ddi_repeats
        if cell.arm == "scratch":
            assert cell.needs is None and _flag(cell.cmd, "init_from") is None
            continue
        source = by_name[cell.needs]
        assert source.name == f"pretrain/{group}/{cell.arm}/seed{cell.seed}"
        assert _flag(cell.cmd, "init_from") == os.path.abspath(os.path.join(tmp_path, cell.needs))
    # the DDI repeats of different seeds never coincide
    if c.ddi_repeats > 1:
        ddi = [
            eval(_flag(x.cmd, "seeds"))
            for x in cells
            if x.task == "chchminer_molecule" and x.arm == "scratch"
        ]
        flat = [s for seeds in ddi for s in seeds]
        assert len(flat) == len(set(flat))


def test_a_cell_is_finished_only_when_every_split_ended(tmp_path):
    cell = tmp_path / "finetune" / "freesolv" / "scratch" / "seed0"
    split = cell / "splits" / "seed0_fold0"
    split.mkdir(parents=True)
    assert not mrl.finished(str(cell))
    (cell / "results.json").write_text(json.dumps({"splits": [{"split": "seed0_fold0", "test": {}}]}))
    (split / "summary.json").write_text(json.dumps({"test": {"rmse": 1.0}, "steps": 40, "num_steps": 100}))
    assert not mrl.finished(str(cell))  # stopped at step 40 of 100
    (split / "summary.json").write_text(
        json.dumps({"test": {"rmse": 1.0}, "steps": 40, "num_steps": 100, "early_stopped": True})
    )
    assert mrl.finished(str(cell))  # early stopping ends a split
    pre = tmp_path / "pretrain" / "solvation" / "3dmrl" / "seed0"
    pre.mkdir(parents=True)
    (pre / "summary.json").write_text(json.dumps({"steps": 3, "num_steps": 4}))
    assert not mrl.finished(str(pre))
    (pre / "summary.json").write_text(json.dumps({"steps": 4, "num_steps": 4}))
    assert mrl.finished(str(pre))


def test_replicate_differences():
    """One difference per replicate (seed × split, read from the rows' split prefix), clustered by
    seed; identical predictions give exactly 0; a better arm gives RMSE below 0 and ROC-AUC above."""
    (_, rmse, _), _ = mrl.task_metrics("regression")
    (_, auc, _), _ = mrl.task_metrics("classification")
    rng = np.random.default_rng(0)

    def rows_of(n):
        return np.array([f"fold{i % 2}|{i}" for i in range(n)])

    y = [rng.normal(size=300) for _ in range(3)]
    same = [(rows_of(300), t, t + 0.5) for t in y]
    d, clusters = mrl.replicate_differences(same, same, [0, 1, 2], rmse)
    assert d == [0.0] * 6 and clusters == [0, 0, 1, 1, 2, 2]
    better = [(rows_of(300), t, t + 0.1 * rng.normal(size=300)) for t in y]
    worse = [(rows_of(300), t, t + 1.0 * rng.normal(size=300)) for t in y]
    d, _ = mrl.replicate_differences(better, worse, [0, 1, 2], rmse)
    k = np.array([r.startswith("fold1") for r in rows_of(300)])
    assert d[1] == pytest.approx(rmse(y[0][k], better[0][2][k]) - rmse(y[0][k], worse[0][2][k]))
    assert max(d) < 0
    labels = [rng.integers(0, 2, size=400).astype(float) for _ in range(3)]
    good = [(rows_of(400), t, (2 * t - 1) + rng.normal(size=400)) for t in labels]
    poor = [(rows_of(400), t, (2 * t - 1) * 0.1 + rng.normal(size=400)) for t in labels]
    d, _ = mrl.replicate_differences(good, poor, [0, 1, 2], auc)
    assert min(d) > 0


def test_study_mrl_presets_and_unknown_names():
    assert study_config.get_config("cpu").study == "3dmrl"
    with pytest.raises(ValueError, match="unknown 3DMRL study preset"):
        study_config.get_config("huge")
    c = study_config.get_config("tiny")
    c.arms = ("scratch", "3dmlr")
    with pytest.raises(ValueError, match="unknown arm '3dmlr'"):
        mrl.build_cells(c, "/tmp/x", study.MRL3D)
