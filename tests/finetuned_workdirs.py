"""Fine-tuning workdirs as experiments.finetune leaves them (config.json, target_stats.json, a
checkpoint in checkpoints/ and best/, EMA weights), without spending a training run on them.

The parameters have the model's shapes (``jax.eval_shape`` of its initialisation: no compilation)
and random values, every weight N(0, 1/fan_in) and every bias and scale N(0, 0.1²) (flax would
start biases at zero and hide a wrongly added one); the EMA weights differ from the raw ones, so a
test can tell which were used. Made once per session.

Used by tests/test_predict.py, test_export.py and test_ase.py.
"""

import os

import jax
import numpy as np
import optax

_MADE = {}


def random_params(shapes, seed: int):
    rng = np.random.default_rng(seed)

    def draw(x):
        std = 1.0 / np.sqrt(x.shape[-2]) if len(x.shape) >= 2 else 0.1
        return (std * rng.standard_normal(x.shape)).astype(x.dtype)

    return jax.tree_util.tree_map(draw, shapes)


def make_finetune_workdir(workdir: str, config, step: int = 6) -> str:
    from georecon_jax.models.property import create_property_model
    from georecon_jax.objectives.supervised import init_params
    from georecon_jax.tasks.property_data import load_workdir_task_data, make_batchers, resolve_config
    from georecon_jax.training.checkpoint import Checkpointer
    from georecon_jax.training.loop import record_config
    from georecon_jax.training.state import create_train_state

    os.makedirs(workdir, exist_ok=True)
    record_config(config, workdir)
    resolved = resolve_config(config)
    data = load_workdir_task_data(resolved, workdir)  # writes target_stats.json
    graph = jax.tree_util.tree_map(
        lambda x: x[0], make_batchers(resolved, data, 1, names=("train",))["train"].batch(0)
    )
    model = create_property_model(resolved.model)
    denoise = resolved.loss.get("denoise_weight", 0.0) > 0
    shapes = jax.eval_shape(
        lambda g: init_params(model, g, jax.random.PRNGKey(3), with_denoise=denoise), graph
    )
    params = random_params(shapes, seed=3)
    ema = jax.tree_util.tree_map(lambda a, b: a + 0.1 * b, params, random_params(shapes, seed=4))
    state = create_train_state(model.apply, params, optax.identity(), use_ema=True)
    state = state.replace(ema_params=ema, step=step)
    for folder in (workdir, os.path.join(workdir, "best")):
        ckpt = Checkpointer(folder)
        ckpt.save(step, state)
        ckpt.close()
    return workdir


def qm9_workdir(tmp_path_factory, target: str = "homo") -> str:
    """A QM9 fine-tuning workdir of the tiny config (the first 400 molecules; needs $GEORECON_CACHE
    from the qm9_small fixture)."""
    key = ("qm9", target)
    if key not in _MADE:
        from experiments.configs import finetune_qm9

        cfg = finetune_qm9.get_config("tiny")
        cfg.target = target
        cfg.data.cache_dir = os.environ["GEORECON_CACHE"]
        _MADE[key] = make_finetune_workdir(str(tmp_path_factory.mktemp(f"qm9_{target}")), cfg)
    return _MADE[key]


def md17_workdir(tmp_path_factory, data_dir: str, molecule: str = "ethanol") -> str:
    """An rMD17 fine-tuning workdir of the tiny config (energies in kcal/mol, as the files)."""
    key = ("md17", molecule)
    if key not in _MADE:
        from experiments.configs import finetune_md17

        cfg = finetune_md17.get_config("tiny")
        cfg.molecule = molecule
        cfg.data.data_dir = str(data_dir)
        _MADE[key] = make_finetune_workdir(str(tmp_path_factory.mktemp(f"md17_{molecule}")), cfg)
    return _MADE[key]
