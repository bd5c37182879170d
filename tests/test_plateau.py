"""The plateau learning-rate schedule (optim.schedule='plateau'): torchmd-net's reduce_on_plateau.

torchmd-net (torchmdnet/module.py, examples/ET-MD17.yaml) warms up linearly over lr_warmup_steps,
then torch's ReduceLROnPlateau on the validation loss (mode min, threshold 1e-4 relative,
cooldown 0) multiplies the rate by lr_factor after lr_patience evaluations without improvement,
never below lr_min. The scale lives in the optimizer state, so a run killed and resumed continues
with the same rate and patience counter.
"""

import json
import os
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from conftest import ROOT
from experiments.configs import common
from georecon_jax.training import runner
from georecon_jax.training.optimizer import (
    PlateauState,
    create_optimizer,
    find_plateau,
    plateau_learning_rate,
    plateau_step,
    replace_plateau,
)


def optim(**overrides):
    base = dict(learning_rate=1e-3, warmup_steps=0, schedule="plateau", plateau_factor=0.5)
    base.update(plateau_patience=2, min_learning_rate=1e-4)
    return common.optimizer(**dict(base, **overrides))


def start():
    return PlateauState(np.float32(1), np.float32(0), np.int32(0), np.int32(0))


def rates(values, cfg, first_step=1):
    """The rate after each evaluation of ``values`` (one per step from first_step), and the state."""
    state, out = start(), []
    for k, v in enumerate(values):
        state, _ = plateau_step(state, v, first_step + k, cfg)
        out.append(cfg.learning_rate * float(state.scale))
    return out, state


class TorchReduceLROnPlateau:
    """torch.optim.lr_scheduler.ReduceLROnPlateau.step, mode 'min', threshold_mode 'rel', cooldown 0,
    transcribed (one parameter group, float64)."""

    def __init__(self, lr, factor, patience, min_lr, threshold=1e-4, eps=1e-8):
        self.lr, self.factor, self.patience, self.min_lr = lr, factor, patience, min_lr
        self.threshold, self.eps = threshold, eps
        self.best, self.num_bad_epochs = float("inf"), 0

    def step(self, current):
        if current < self.best * (1.0 - self.threshold):
            self.best, self.num_bad_epochs = current, 0
        else:
            self.num_bad_epochs += 1
        if self.num_bad_epochs > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > self.eps:
                self.lr = new_lr
            self.num_bad_epochs = 0


def test_the_rate_drops_by_the_factor_after_patience_evaluations_without_improvement():
    cfg = optim()
    # best 1.0; 0.99995 is within the 1e-4 relative threshold: no improvement
    lr, state = rates([1.0, 1.0, 0.99995], cfg)
    assert lr == [1e-3] * 3 and int(state.num_bad) == 2  # patience 2: not yet
    state, reduced = plateau_step(state, 1.0, 4, cfg)
    assert reduced and float(state.scale) == 0.5 and int(state.num_bad) == 0
    # an improvement restarts the count: the 3rd evaluation after 0.98 without one reduces
    lr, state = rates([1.0, 1.0, 0.98, 1.0, 1.0, 1.0], cfg)
    assert lr == pytest.approx([1e-3] * 5 + [5e-4])
    assert float(state.best) == pytest.approx(0.98)


def test_the_rate_never_falls_below_the_minimum():
    cfg = optim(min_learning_rate=1.5e-4)
    lr, state = rates([1.0] + [2.0] * 40, cfg)
    assert min(lr) >= 1.5e-4 and lr[-1] == pytest.approx(1.5e-4)
    # 1e-3, 5e-4, 2.5e-4, then 1.5e-4 (not 1.25e-4), then nothing changes
    assert sorted(set(np.round(lr, 10)), reverse=True) == pytest.approx([1e-3, 5e-4, 2.5e-4, 1.5e-4])
    assert plateau_learning_rate(state, 100, cfg) >= 1.5e-4


def test_it_is_torchs_reduce_lr_on_plateau():
    cfg = optim(plateau_factor=0.8, plateau_patience=3, min_learning_rate=1e-5)
    rng = np.random.default_rng(0)
    # a noisy decreasing loss with plateaus and a few non-improvements within the threshold
    values = np.maximum.accumulate(rng.uniform(0.0, 1.0, 300))[::-1] + rng.normal(0, 1e-3, 300)
    torch = TorchReduceLROnPlateau(1e-3, 0.8, 3, 1e-5)
    ours, state = [], start()
    for k, v in enumerate(values):
        torch.step(float(v))
        state, _ = plateau_step(state, float(v), k + 1, cfg)
        ours.append((cfg.learning_rate * float(state.scale), int(state.num_bad)))
        assert ours[-1][0] == pytest.approx(torch.lr, rel=1e-6) and ours[-1][1] == torch.num_bad_epochs, k
    assert ours[-1][0] < 1e-4  # it did reduce, many times


def test_a_reduction_during_warm_up_is_lost_as_in_torchmd_net():
    """torchmd-net's optimizer_step sets the rate outright while global_step < lr_warmup_steps."""
    cfg = optim(warmup_steps=10, plateau_patience=0)
    state, reduced = plateau_step(start(), 1.0, 3, cfg)
    state, reduced = plateau_step(state, 2.0, 6, cfg)  # a reduction, overwritten by the warm-up
    assert not reduced and float(state.scale) == 1.0 and int(state.num_bad) == 0
    state, reduced = plateau_step(state, 2.0, 10, cfg)  # warm-up over: it holds
    assert reduced and float(state.scale) == 0.5
    assert plateau_learning_rate(state, 0, cfg) == pytest.approx(1e-3 * 0.1 * 0.5)


def test_updates_are_adamw_at_the_scaled_rate():
    cfg = optim(weight_decay=0.1, grad_clip=0.0)
    params = {"w": jnp.array([1.0, -2.0, 3.0])}
    grads = {"w": jnp.array([0.3, 0.1, -0.2])}
    tx = create_optimizer(cfg, 100)
    opt_state = tx.init(params)
    assert float(find_plateau(opt_state).scale) == 1.0
    opt_state = replace_plateau(
        opt_state, PlateauState(np.float32(0.25), np.float32(1), np.int32(1), np.int32(0))
    )
    updates, _ = tx.update(grads, opt_state, params)
    reference, _ = optax.adamw(0.25e-3, weight_decay=0.1).update(
        grads, optax.adamw(0.25e-3, weight_decay=0.1).init(params), params
    )
    np.testing.assert_allclose(updates["w"], reference["w"], rtol=1e-6)


def test_warm_up_is_torchmd_nets():
    cfg = optim(warmup_steps=4, grad_clip=0.0)
    tx = create_optimizer(cfg, 100)
    params, grads = {"w": jnp.ones(2)}, {"w": jnp.ones(2)}
    opt_state, sizes = tx.init(params), []
    for _ in range(6):
        updates, opt_state = tx.update(grads, opt_state, params)
        sizes.append(float(-updates["w"][0]))  # Adam's first normalised step is 1 x lr
    np.testing.assert_allclose(sizes, 1e-3 * np.array([0.25, 0.5, 0.75, 1, 1, 1]), rtol=1e-3)


def test_bad_settings_are_refused():
    def problems(**overrides):
        config = common.training_loop(num_steps=10, batch_size=2, eval_every=5)
        config.optim = optim(**overrides)
        config.data = common.ConfigDict(dict(workers=common.batch_workers()))
        return runner.loop_problems(config)

    assert problems() == []
    assert any("optim.schedule='step'" in p for p in problems(schedule="step"))
    assert any("optim.plateau_factor=1.0" in p for p in problems(plateau_factor=1.0))
    assert any("optim.plateau_patience=-1" in p for p in problems(plateau_patience=-1))
    assert any("optim.min_learning_rate=-1" in p for p in problems(min_learning_rate=-1.0))
    config = common.training_loop(num_steps=10, batch_size=2, eval_every=0)
    config.optim = optim()
    config.data = common.ConfigDict(dict(workers=common.batch_workers()))
    assert any("eval_every=0" in p for p in runner.loop_problems(config))


def test_cosine_stays_the_default_and_keeps_its_state():
    cfg = common.optimizer()
    assert cfg.schedule == "cosine"
    assert find_plateau(create_optimizer(cfg, 10).init({"w": jnp.ones(2)})) is None


# ---------------------------------------------------------------------------------------------
# Resume after SIGKILL, through the runner, on a toy task (no chemistry: the runner has none).

# The validation loss after each step (eval_every=1), patience 2, factor 0.5, min 0.2 x lr:
#   1: best | 2, 3: bad 1, 2 | 4: bad 3 -> 0.5 | 5: 0.99995 is no improvement: bad 1 |
#   6: bad 2 (checkpoint: scale 0.5, 2 bad) | 7: bad 3 -> 0.25 (killed here, before a checkpoint) |
#   8: best | 9, 10: bad 1, 2 | 11: bad 3 -> max(0.125, 0.2) = 0.2 | 12: bad 1
SCRIPT = [1.0, 1.1, 1.2, 1.3, 0.99995, 1.0, 1.0, 0.5, 0.6, 0.6, 0.6, 0.6]
KILL_AT = 7


def toy_config():
    config = common.training_loop(num_steps=len(SCRIPT), batch_size=8, eval_every=1)
    config.update(checkpoint_every=3, log_every=1, tensorboard=False, num_devices=1)
    config.optim = optim(learning_rate=0.1, min_learning_rate=0.02, grad_clip=0.0)
    config.data = common.ConfigDict(dict(workers=common.batch_workers()))  # batches in a thread
    return config


class ToyTask:
    """Least squares on a fixed batch; the validation loss follows SCRIPT (by step)."""

    compare_sections = ()

    def __init__(self, kill_at=None):
        self.kill_at = kill_at

    def validate(self, config):
        return []

    def build(self, config, workdir, mesh, key):
        rng = np.random.default_rng(0)
        x = rng.normal(size=(1, 1, 8, 3)).astype(np.float32)  # [devices, micro-batches, examples, 3]
        batch = {"x": x, "y": (x @ np.array([1.0, -2.0, 0.5], np.float32)).astype(np.float32)}

        def loss_fn(params, b, key):
            return (b["x"] @ params["w"] - b["y"]) ** 2, {}

        def kill(step, state, metrics):
            if step == self.kill_at:
                os.kill(os.getpid(), signal.SIGKILL)
            return False

        return runner.Job(
            params={"w": jnp.zeros(3)},
            apply_fn=None,
            loss_fn=loss_fn,
            train_batch=lambda k: batch,
            num_steps=config.num_steps,
            eval_fn=lambda state, step: {"loss": SCRIPT[step - 1]},
            on_eval=(kill,),
            mask_fn=lambda b: jnp.ones(b["x"].shape[0], bool),
            desc="toy",
        )

    def finish(self, config, workdir, job, state):
        plateau = jax.device_get(find_plateau(state.opt_state))
        w = np.asarray(jax.device_get(state.params["w"]))
        return {"plateau": [float(x) for x in plateau], "w": w.tolist()}


def test_a_killed_run_resumes_with_the_reduced_rate_and_the_same_patience_counter(tmp_path):
    killed, whole = str(tmp_path / "killed"), str(tmp_path / "whole")
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run(
        [sys.executable, __file__, killed, str(KILL_AT)], cwd=ROOT, env=env, capture_output=True, text=True
    )
    assert out.returncode == -signal.SIGKILL, out.stderr[-3000:]
    assert sorted(os.listdir(os.path.join(killed, "checkpoints"))) == ["3", "6"]
    resumed = runner.run_experiment(ToyTask(), toy_config(), killed)
    uninterrupted = runner.run_experiment(ToyTask(), toy_config(), whole)
    # scale 0.2 (never below min 0.02 / 0.1), best 0.5, one evaluation without improvement
    assert resumed["plateau"] == pytest.approx([0.2, 0.5, 1, 1])
    assert resumed["plateau"] == uninterrupted["plateau"]
    assert resumed["w"] == uninterrupted["w"]  # bitwise: every step ran at the same rate
    with open(os.path.join(whole, "metrics.jsonl")) as f:
        rows = [json.loads(line) for line in f if '"validation"' in line]
    rate = [r["learning_rate"] for r in rows]
    assert rate == pytest.approx([0.1] * 3 + [0.05] * 3 + [0.025] * 4 + [0.02] * 2)
    assert [r["plateau_bad_evaluations"] for r in rows] == [0, 1, 2, 0, 1, 2, 0, 0, 1, 2, 0, 1]


if __name__ == "__main__":  # the run the test above kills: python tests/test_plateau.py WORKDIR STEP
    runner.run_experiment(ToyTask(kill_at=int(sys.argv[2])), toy_config(), sys.argv[1])
