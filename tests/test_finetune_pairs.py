"""georecon_jax/tasks/finetune_pairs.py: a pair fine-tuning killed mid-split resumes as a straight run."""

import json
import os

import jax
import numpy as np
import pytest


@pytest.mark.slow
def test_pair_finetune_sigkill_then_resume_equals_uninterrupted(tmp_path):
    """3DMRL pretraining through the pretrain command, then fine-tuning on a user's pair file
    (FreeSolv rows, other column names) from its checkpoint: kill -9 after an epoch's checkpoint, rerun the same command: the split resumes from
    its checkpoint and ends with the parameters and test metrics of a straight run; both runs'
    splits count as finished (a third run would skip them)."""
    import subprocess
    import sys
    from conftest import ROOT, kill_after_first_checkpoint, require_shared
    from georecon_jax.training.checkpoint import restore_params

    data_root = require_shared("solvation")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    pretrained = tmp_path / "mrl3d"
    pre = [
        sys.executable,
        "-m",
        "experiments.pretrain",
        "--config=experiments/configs/mrl3d.py:tiny",
        f"--config.data.data_root={data_root.parent}",
        f"--workdir={pretrained}",
    ]
    out = subprocess.run(pre, cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    assert json.loads((pretrained / "summary.json").read_text())["objective"] == "3dmrl"

    # fine-tuned on a pair file a user brings: 40 real FreeSolv rows under other column names, in
    # another order, with an unused column; described on the command line alone (no preset)
    import csv

    user = tmp_path / "my_solvation.csv"
    with open(data_root / "freesolv.csv", newline="") as f, open(user, "w", newline="") as g:
        w = csv.writer(g)
        w.writerow(["note", "dG", "mol_b", "mol_a"])
        for i, r in zip(range(40), csv.DictReader(f)):
            w.writerow([f"row {i}", r["Gsolv"], r["solvent"], r["solute"]])

    def cmd(workdir):
        return [
            sys.executable,
            "-m",
            "experiments.finetune_pairs",
            "--config=experiments/configs/mrl_finetune.py:tiny",
            "--config.data.preset=",
            f"--config.data.files={user}",
            "--config.data.smiles_columns=mol_a,mol_b",
            "--config.data.label_columns=dG",
            "--config.data.task=regression",
            "--config.data.units=kcal/mol",
            f"--config.init_from={pretrained}",
            "--config.num_epochs=4",
            f"--workdir={workdir}",
        ]

    straight = tmp_path / "straight"
    out = subprocess.run(cmd(straight), cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    killed = tmp_path / "killed"
    steps = kill_after_first_checkpoint(cmd(killed), killed / "splits" / "seed0_fold0" / "checkpoints", env)
    final = json.loads((straight / "results.json").read_text())["splits"][0]["num_steps"]
    assert steps[-1] < final
    out = subprocess.run(cmd(killed), cwd=ROOT, env=env, capture_output=True, text=True, timeout=400)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "resuming from the checkpoint at step" in out.stdout
    split = "splits/seed0_fold0"
    (sa, a), (sb, b) = restore_params(str(straight / split)), restore_params(str(killed / split))
    assert sa == sb == final
    for x, y in zip(jax.tree_util.tree_leaves(a["params"]), jax.tree_util.tree_leaves(b["params"])):
        np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (straight, killed))
    assert ra["init"] == f"3DMRL checkpoint {pretrained}"
    assert (ra["task"], ra["units"], ra["task_type"], ra["num_pairs"]) == (
        "my_solvation",
        "kcal/mol",
        "regression",
        40,
    )
    assert all(np.isfinite(v) for v in ra["splits"][0]["test"].values())
    assert (
        ra["test_mean_std"] == rb["test_mean_std"]
        and ra["splits"][0]["best_step"] == rb["splits"][0]["best_step"]
    )
    # a third run would find the split finished and train nothing (run() skips what this says)
    from georecon_jax.tasks.finetune_pairs import split_finished

    assert split_finished(str(killed / split)) and split_finished(str(straight / split))
