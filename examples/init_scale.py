"""The QM9 fine-tuning model at initialisation: its loss and gradient norm on the first training
batches, for each vector norm and head initialisation (issue 32 item 6: why the whitened vector norm
costs HOMO at 1,500 steps).

  python examples/init_scale.py                      # quick model, HOMO, seeds 0 and 1, 4 batches
  python examples/init_scale.py --size=tiny --batches=1 --seeds=0

Builds the model exactly as `experiments.finetune` does (`FinetuneTask.build`, the config
`finetune_qm9.py:<size>` with ``target``, ``seed``, ``model.encoder.vec_norm`` and
``model.head.zero_init`` set), and prints a Markdown table: the mean training loss at step 0 (the
reference's: the MSE in the target's unit, eV² for HOMO, plus 0.1 × the denoising regulariser's
MSE; a model that predicts the target mean scores about the target's variance, 0.35 eV² for
HOMO, plus about 0.2) and the global gradient norm. Reads the embedded QM9 (qm9pack); about a minute on
2 CPU cores at the quick size.
"""

import argparse
import importlib.util
import os
import sys
import tempfile

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


def finetune_config(size: str):
    """`experiments/configs/finetune_qm9.py`'s config at ``size``."""
    path = os.path.join(ROOT, "experiments", "configs", "finetune_qm9.py")
    spec = importlib.util.spec_from_file_location("finetune_qm9_config", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(size)


def measure(size: str, target: str, vec_norm: str, zero_init: bool, seed: int, batches: int):
    """(mean loss, mean gradient norm) of the freshly built model over the first ``batches``
    training batches."""
    import jax
    import jax.numpy as jnp

    from georecon_jax.tasks.finetune import FinetuneTask
    from georecon_jax.training.state import make_mesh

    c = finetune_config(size)
    c.target, c.seed = target, seed
    c.model.encoder.vec_norm = vec_norm
    c.model.head.zero_init = zero_init
    with tempfile.TemporaryDirectory() as workdir:
        job = FinetuneTask().build(c, workdir, make_mesh(1), jax.random.PRNGKey(seed))
        losses, norms = [], []
        for b in range(batches):
            graph = jax.tree_util.tree_map(lambda x: x[0], job.train_batch(b))
            real = jnp.asarray(job.mask_fn(graph), jnp.float32)

            def loss(params):
                per_graph = job.loss_fn(params, graph, jax.random.PRNGKey(b))[0]
                return jnp.sum(per_graph * real) / jnp.sum(real)

            value, grads = jax.value_and_grad(loss)(job.params)
            losses.append(float(value))
            norms.append(float(jnp.sqrt(sum(jnp.sum(g**2) for g in jax.tree_util.tree_leaves(grads)))))
    return float(np.mean(losses)), float(np.mean(norms))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", default="quick")
    p.add_argument("--target", default="homo")
    p.add_argument("--seeds", default="0,1")
    p.add_argument("--batches", type=int, default=4)
    p.add_argument("--vec_norms", default="whitened,whitened_reference,none")
    p.add_argument("--zero_init", default="false,true", help="head initialisations to try")
    a = p.parse_args(argv)
    seeds = [int(s) for s in a.seeds.split(",")]
    rows = []
    print("| vector norm | head | seed | loss at step 0 | gradient norm at step 0 |")
    print("|---|---|---:|---:|---:|")
    for vec_norm in a.vec_norms.split(","):
        for zero in a.zero_init.split(","):
            zero_init = {"true": True, "false": False}[zero.strip().lower()]
            for seed in seeds:
                loss, norm = measure(a.size, a.target, vec_norm, zero_init, seed, a.batches)
                head = "zeros" if zero_init else "Xavier"
                rows.append(dict(vec_norm=vec_norm, head=head, seed=seed, loss=loss, grad_norm=norm))
                print(f"| {vec_norm} | {head} | {seed} | {loss:.4g} | {norm:.4g} |", flush=True)
    return rows


if __name__ == "__main__":
    main()
