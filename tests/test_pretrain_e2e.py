"""Pretraining end to end on real QM9 (tiny config): files written, resume, determinism, safety."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from experiments.configs import georecon as georecon_config
from georecon_jax.training.checkpoint import restore_params
from georecon_jax.training.loop import ConfigMismatchError, read_metrics, record_config, workdir_lock
from georecon_jax.tasks import pretrain


ROOT = Path(__file__).resolve().parents[1]


def _config(num_steps, cache_dir, **over):
    c = georecon_config.get_config("tiny")
    c.num_steps = num_steps
    c.data.cache_dir = cache_dir
    c.objective.num_recon_molecules = over.pop("recon", 0)
    for k, v in over.items():
        c[k] = v
    return c


def _params(workdir):
    step, tree = restore_params(workdir)
    return step, tree["params"]


def _assert_same_params(a, b, atol=0.0):
    for x, y in zip(jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=0)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, cache_dir):
    workdir = str(tmp_path_factory.mktemp("full"))
    summary = pretrain.run(_config(8, cache_dir, recon=8), workdir)
    return workdir, summary


def test_run_writes_checkpoints_metrics_config_and_reconstruction(full_run):
    workdir, summary = full_run
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]
    train_rows = read_metrics(workdir, "train")
    assert [r["step"] for r in train_rows] == [2, 4, 6, 8]
    assert all(np.isfinite(r["loss"]) for r in train_rows)
    assert [r["step"] for r in read_metrics(workdir, "validation")] == [4, 8]
    cfg = json.load(open(os.path.join(workdir, "config.json")))
    assert cfg["objective"]["name"] == "georecon" and cfg["model"]["encoder"]["features"] == 16
    assert summary["steps"] == 8 and summary["skipped_nonfinite_steps"] == 0
    assert summary["num_molecules"] == 8 and np.isfinite(summary["reconstruction_rmsd_angstrom"])
    assert json.load(open(os.path.join(workdir, "summary.json")))["steps"] == 8
    assert os.path.getsize(os.path.join(workdir, "learning_curves.png")) > 1000


def test_resume_continues_and_matches_an_uninterrupted_run(full_run, tmp_path, cache_dir):
    """4 steps, then the same command with 8 steps: it resumes at 4 and ends where a straight run ends."""
    workdir = str(tmp_path / "resumed")
    c = _config(8, cache_dir, eval_every=0)  # evaluation does not touch the parameters
    pretrain.run(c, workdir, stop_after=4)  # as if the job died right after its step-4 checkpoint
    assert _params(workdir)[0] == 4
    pretrain.run(c, workdir)
    assert [r["step"] for r in read_metrics(workdir, "train")] == [2, 4, 6, 8]  # 6, 8 only after resume
    step, resumed = _params(workdir)
    _, straight = _params(full_run[0])
    assert step == 8
    _assert_same_params(resumed, straight)


def test_incompatible_config_is_refused_naming_the_difference(full_run, cache_dir):
    workdir, _ = full_run
    c = _config(8, cache_dir)
    c.model.encoder.features = 32  # refused before any data is read or model built
    with pytest.raises(ConfigMismatchError, match=r"model.encoder.features: saved 16, now 32"):
        pretrain.run(c, workdir)


def test_report_only_fields_may_change_on_resume(tmp_path, cache_dir):
    """The sampler, the number of molecules rebuilt and the diagnostic's σ change only the report:
    a finished or interrupted run may be resumed (or re-reported) with them changed, or from a
    config.json written before they existed; a training field still refuses."""
    workdir = str(tmp_path)
    saved = _config(8, cache_dir, recon=8)
    record_config(saved, workdir)
    old = json.load(open(os.path.join(workdir, "config.json")))
    del old["objective"]["sampler"]  # a run recorded before the field existed
    json.dump(old, open(os.path.join(workdir, "config.json"), "w"))
    c = _config(8, cache_dir, recon=64)
    c.objective.sampler = "renoise"
    c.objective.diagnostic_sigmas = (1.0, 8.0)
    record_config(c, workdir)
    assert json.load(open(os.path.join(workdir, "config.json")))["objective"]["sampler"] == "renoise"
    c.objective.sigma_max = 10.0
    with pytest.raises(ConfigMismatchError, match=r"objective.sigma_max: saved 2.0, now 10.0") as e:
        record_config(c, workdir)
    assert "sampler" not in str(e.value) and "num_recon_molecules" not in str(e.value)


def test_a_training_field_added_later_compares_as_its_old_behaviour(tmp_path, cache_dir):
    """objective.code_source came after runs were saved: a config.json without it is a run with z
    from the clean molecule, so resuming it with 'clean' is accepted and with 'noisy' refused."""
    workdir = str(tmp_path)
    record_config(_config(8, cache_dir), workdir)
    old = json.load(open(os.path.join(workdir, "config.json")))
    del old["objective"]["code_source"]
    json.dump(old, open(os.path.join(workdir, "config.json"), "w"))
    c = _config(8, cache_dir)
    c.objective.code_source = "noisy"
    with pytest.raises(ConfigMismatchError, match=r"objective.code_source: saved 'clean', now 'noisy'"):
        record_config(c, workdir)
    c.objective.code_source = "clean"
    record_config(c, workdir)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("objective.sigma_min", -0.1, "0 < sigma_min <= sigma_max"),
        ("model.encoder.num_heads", 3, "not divisible by num_heads=3"),
        ("batch_size", 0, "batch_size=0: must be positive"),
    ],
)
def test_invalid_config_values_are_refused_before_anything_runs(tmp_path, cache_dir, field, value, message):
    c = _config(2, cache_dir)
    *path, key = field.split(".")
    node = c
    for part in path:
        node = node[part]
    node[key] = value
    with pytest.raises(ValueError, match=message):
        pretrain.run(c, str(tmp_path / "bad"))
    assert not os.path.exists(tmp_path / "bad")


def test_two_runs_never_share_a_workdir(tmp_path, cache_dir):
    with workdir_lock(str(tmp_path)):
        with pytest.raises(RuntimeError, match="another run is using the workdir"):
            pretrain.run(_config(2, cache_dir), str(tmp_path))


def _cli(workdir, cache_dir, *extra, config="georecon.py"):
    env = dict(os.environ, GEORECON_CACHE=cache_dir, JAX_PLATFORMS="cpu")
    return [
        sys.executable,
        "-m",
        "experiments.pretrain",
        f"--config=experiments/configs/{config}:tiny",
        f"--workdir={workdir}",
        "--config.objective.num_recon_molecules=0",
        *extra,
    ], env


def test_unknown_config_key_fails_at_once_naming_it(tmp_path, cache_dir):
    cmd, env = _cli(tmp_path, cache_dir, "--config.optim.learnin_rate=1e-3")
    out = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0
    assert "learnin_rate" in out.stderr and "learning_rate" in out.stderr
    assert not os.path.exists(tmp_path / "checkpoints")


# kill -9 of the pretraining command, then the same command again: tests/test_multihost.py (the
# run resumes from its last complete checkpoint on 1 or 2 processes and ends as a straight run).


@pytest.mark.slow
def test_sigterm_saves_a_checkpoint_before_exit(tmp_path, cache_dir):
    """The preemption path is the runner's, the same for every objective: Coord's step is the cheapest."""
    workdir = tmp_path / "term"
    cmd, env = _cli(
        workdir,
        cache_dir,
        "--config.num_steps=100000",
        "--config.checkpoint_every=100000",
        "--config.eval_every=0",
        config="coord.py",
    )
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    metrics = workdir / "metrics.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline and not (metrics.exists() and metrics.stat().st_size > 0):
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err[-2000:]
    steps = sorted(int(p) for p in os.listdir(workdir / "checkpoints") if p.isdigit())
    assert len(steps) == 1 and 2 <= steps[0] < 100000
    assert "SIGTERM" in err + out
