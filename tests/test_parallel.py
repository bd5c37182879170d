"""Data parallelism on 4 simulated CPU devices: same gradient (SGD update) as one device (in both batch layouts,
pairs and dense), resumable on 1 device.

The 4-device checks run in a subprocess with ``--xla_force_host_platform_device_count=4``,
because the pytest process has already started JAX with one device. The objective is Coord's, the
cheapest step: the sharding, gradient averaging, checkpointing and resume are one runner's for
every objective (georecon_jax/training/runner.py).
"""

import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent(r"""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    sys.path.insert(0, "tests")
    from sgd_compare import max_abs_diff, sgd_params_mismatch
    from experiments.configs import coord
    from georecon_jax.data.qm9 import load_qm9
    from georecon_jax.training.state import make_mesh, shard_batch
    from georecon_jax.tasks import pretrain
    from experiments.cli import setup_logging
    setup_logging()

    cache_dir, workdir = sys.argv[1], sys.argv[2]
    out = {"num_devices_visible": len(jax.devices())}

    def tiny(num_steps, num_devices):
        c = coord.get_config("tiny")
        c.data.cache_dir = cache_dir
        c.objective.num_recon_molecules = 0
        c.graph.num_buckets = 1     # one padded shape: fewer compilations, a faster test
        c.optim.warmup_steps = 0    # the first step must move the parameters (warm-up starts at lr 0)
        # SGD: an update proportional to the gradient, which is what the layouts must agree on (Adam's
        # first step moves each element by about lr whatever its gradient: tests/sgd_compare.py)
        c.optim.optimizer, c.optim.learning_rate = "sgd", 0.05
        c.num_steps, c.checkpoint_every, c.eval_every = num_steps, 4, 0
        c.num_devices = num_devices
        return c

    # 1. One step on a global batch of 8: 4 devices x 2 molecules vs 1 device x 8 molecules (as
    # 2 micro-batches, the automatic CPU layout). The config, batches and step are those of the
    # runs in part 2, whose compilations therefore come from the persistent cache.
    molecules, splits = load_qm9(cache_dir=cache_dir, limit=400, verbose=False)
    params = None
    results, traces = {}, {}
    # and the dense layout (issue 18) on 4 devices: the same update again (dense on 1 device equals
    # pairs: tests/test_dense_layout.py)
    for layout, nd in (("pairs", 1), ("pairs", 4), ("dense", 4)):
        cfg = tiny(6, nd)
        cfg.graph.layout = layout
        batcher = pretrain.make_batchers(cfg, molecules, splits, nd)[0]
        assert batcher.layout == layout
        mesh = make_mesh(nd)
        counter = []
        _, state, step = pretrain.fresh_train_step(cfg, batcher, mesh, jax.random.PRNGKey(cfg.seed),
                                                   params, counter)
        params = jax.device_get(state.params) if params is None else params  # same start on all
        state, metrics = step(state, shard_batch(batcher.batch(0), mesh))
        results[layout, nd] = (jax.device_get(state.params), float(metrics["loss"]),
                               float(metrics["num_graphs"]), float(metrics["grad_norm"]))
        # Warm-up over every batch shape, then a second pass must not trace (compile) again.
        for k in range(1, 3):
            state, metrics = step(state, shard_batch(batcher.batch(k), mesh))
        warm = len(counter)
        for k in range(0, 3):
            state, metrics = step(state, shard_batch(batcher.batch(k), mesh))
        shapes = len(batcher.widths) if layout == "dense" else len(batcher.budgets)
        traces[f"{layout} {nd}"] = {"after_warmup": warm, "after_second_pass": len(counter),
                                    "num_budgets": shapes}

    ref = results["pairs", 1]
    update = max_abs_diff(ref[0], params)
    out.update(traces=traces, max_param_change=update, runs={
        f"{layout} {nd}": dict(param_mismatch=sgd_params_mismatch(r[0], ref[0], update), loss=r[1],
                               graphs=r[2], grad_norm=r[3])
        for (layout, nd), r in results.items()})

    # 2. A run saved on 4 devices resumes on 1.
    first = pretrain.run(tiny(6, 4), workdir, stop_after=4)  # as if killed after step 4's checkpoint
    second = pretrain.run(tiny(6, 1), workdir)
    straight = pretrain.run(tiny(6, 1), workdir + "_straight")  # never interrupted, one device
    from georecon_jax.training.checkpoint import restore_params
    (step_a, a), (step_b, b) = restore_params(workdir), restore_params(workdir + "_straight")
    # the scale of one step's update: part 1's first step, at the peak rate (the cosine schedule
    # lowers it after); the 6 steps may drift apart
    out.update(resumed_step=step_a, straight_step=step_b, resume_param_mismatch=sgd_params_mismatch(
        a["params"], b["params"], update, steps=6))
    out.update(first_steps=first["steps"], second_steps=second["steps"],
               second_loss=second["final_train_loss"])
    print("RESULT " + json.dumps(out))
""")


@pytest.mark.slow
def test_data_parallel_matches_single_device_and_resumes_on_one(qm9_small, cache_dir, tmp_path):
    flags = os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
    env = dict(
        os.environ,
        XLA_FLAGS=flags.strip(),
        JAX_PLATFORMS="cpu",
        PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
    )
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT, cache_dir, str(tmp_path / "run")],
        env=env,
        cwd=str(ROOT),
        capture_output=True,
        text=True,
        timeout=600,
    )
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = json.loads(lines[-1][len("RESULT ") :])
    assert out["num_devices_visible"] == 4
    # Same molecules, same per-molecule noise: the 4-device update equals the 1-device one, and
    # the dense layout's (1 and 4 devices) the pair layout's.
    ref = out["runs"]["pairs 1"]
    assert out["max_param_change"] > 1e-3, "the step hardly moved the parameters: vacuous"
    for name, r in out["runs"].items():
        assert r["graphs"] == 8, (name, r)
        assert abs(r["loss"] - ref["loss"]) < 1e-5 * max(1.0, abs(ref["loss"])), (name, r, ref)
        assert r["param_mismatch"] <= 1.0, (name, r)  # within float32 rounding: tests/sgd_compare.py
        assert abs(r["grad_norm"] - ref["grad_norm"]) < 1e-4 * ref["grad_norm"], (name, r, ref)
    # No step recompiles after warm-up: at most one trace per padded shape, none in a second pass.
    for name, t in out["traces"].items():
        assert t["after_warmup"] <= t["num_budgets"], (name, t)
        assert t["after_second_pass"] == t["after_warmup"], (name, t)
    # Saved at step 4 on 4 devices, resumed and finished on 1.
    assert out["first_steps"] == 4 and out["second_steps"] == 6
    assert "resuming from the checkpoint at step 4" in proc.stdout
    # ... and ends where a run on 1 device from the start ends (data order and noise depend on
    # the step only; the device layout changes the float summation order, nothing else).
    assert out["resumed_step"] == out["straight_step"] == 6
    assert out["resume_param_mismatch"] <= 1.0, out["resume_param_mismatch"]
    assert math.isfinite(out["second_loss"])
