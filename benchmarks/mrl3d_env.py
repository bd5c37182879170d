"""Throughput of the 3DMRL virtual environment (not a test): environments per second for batches
of 256 real solvation pairs, after compilation, with and without the on-device radius graph.

  python -m benchmarks.mrl3d_env [--preset combisolv] [--data-root DIR] [--batch 256] [--repeats 30] [--out benchmarks/results/mrl3d_env.json]
  python -m benchmarks.mrl3d_env --check [--data-root DIR]   # inputs only: exit 0, or 3 with a one-line reason

The pair file is read from --data-root, else $GEORECON_DATA, else ../shared/data beside the checkout.
benchmarks/run.sh runs --check before its long throughput part and skips this benchmark (one line
saying why) when an input is missing.
"""

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np

from georecon_jax.chem.conformers import MoleculeCache
from georecon_jax.data.pairs import PRESETS, load_pairs
from georecon_jax.graphs.pairs import PairBudget, pack_pairs
from georecon_jax.objectives.environment import radius_adjacency, sample_environments
from georecon_jax.tasks.pair_data import default_data_root

MISSING_INPUT = 3  # exit status when an input is missing (benchmarks/run.sh then skips this benchmark)


def missing_input(preset: str, data_root: str) -> Optional[str]:
    """None when the benchmark's inputs are there, else a one-line reason."""
    for rel in PRESETS[preset]["files"]:
        path = os.path.join(data_root, rel)
        if not os.path.isfile(path):
            return (
                f"no pair file {path} (give the folder that holds {rel} with --data-root DIR "
                "or GEORECON_DATA=DIR)"
            )
    if importlib.util.find_spec("rdkit") is None:
        return "RDKit is not installed (it embeds the pair molecules)"
    return None


def main(argv=None):
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="combisolv", choices=sorted(PRESETS))
    p.add_argument(
        "--data-root",
        default=None,
        help="folder of the pair files (default $GEORECON_DATA, else ../shared/data)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help=f"check the inputs only: exit 0, or {MISSING_INPUT} with a one-line reason",
    )
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument(
        "--max_atoms", type=int, default=24, help="molecule cap (heavy atoms: hydrogens implicit here)"
    )
    p.add_argument("--env_atoms", type=int, default=64, help="environment atom budget M")
    p.add_argument("--cutoff", type=float, default=5.0)
    p.add_argument("--out", default="benchmarks/results/mrl3d_env.json")
    a = p.parse_args(argv)
    data_root = a.data_root or default_data_root()
    reason = missing_input(a.preset, data_root)
    if reason:
        print(f"3DMRL environment benchmark skipped: {reason}", file=sys.stderr, flush=True)
        return MISSING_INPUT
    if a.check:
        print(f"3DMRL environment benchmark: inputs found under {data_root}", flush=True)
        return 0
    # hydrogens implicit, as when benchmarks/results/mrl3d_env.json was measured (pretraining now
    # makes them explicit: molecules and environments are then about twice as large)
    ds = load_pairs(a.preset, data_root=data_root, cache=MoleculeCache(explicit_h=False), verbose=False)
    budget = PairBudget.from_dataset(ds, max_atoms=a.max_atoms)
    ids = np.flatnonzero(budget.fits(ds))[: a.batch]
    b = jax.tree_util.tree_map(jnp.asarray, pack_pairs(ds, ids, a.batch, budget))
    B = a.batch
    d = lambda x: x.reshape((B, -1) + x.shape[1:])
    args = (
        d(b.graph1.nodes.positions),
        d(b.graph1.nodes.mask),
        d(b.graph1.nodes.in_ring),
        d(b.graph2.nodes.positions),
        d(b.graph2.nodes.mask),
    )
    rows = []
    for label, kwargs, with_graph in [
        ("placement only, no compaction", dict(num_copies=5, min_radius=1.5), False),
        (
            "placement + compaction (M budget)",
            dict(num_copies=5, min_radius=1.5, max_atoms=a.env_atoms),
            False,
        ),
        (
            "placement + compaction + radius graph",
            dict(num_copies=5, min_radius=1.5, max_atoms=a.env_atoms),
            True,
        ),
        ("placement + radius graph, no compaction", dict(num_copies=5, min_radius=1.5), True),
        (
            "+ clash rejection (1.0 Å, 8 trials) + compaction + graph",
            dict(num_copies=5, min_radius=1.5, max_atoms=a.env_atoms, min_distance=1.0, num_trials=8),
            True,
        ),
    ]:

        def f(key, kwargs=kwargs, with_graph=with_graph):
            env = sample_environments(key, *args, **kwargs)
            if with_graph:
                return env.positions, radius_adjacency(env.positions, env.node_mask, a.cutoff)
            return env.positions, env.targets

        f = jax.jit(f)
        t0 = time.perf_counter()
        jax.block_until_ready(f(jax.random.PRNGKey(0)))
        compile_s = time.perf_counter() - t0
        times = []
        for i in range(a.repeats):
            t0 = time.perf_counter()
            jax.block_until_ready(f(jax.random.PRNGKey(i + 1)))
            times.append(time.perf_counter() - t0)
        med = float(np.median(times))
        M = int(f(jax.random.PRNGKey(0))[0].shape[1])
        rows.append(
            dict(variant=label, env_slots=M, median_ms=med * 1e3, envs_per_s=B / med, compile_s=compile_s)
        )
    result = dict(
        preset=a.preset,
        batch=B,
        repeats=a.repeats,
        budget=vars(budget) if hasattr(budget, "__dict__") else str(budget),
        devices=str(jax.devices()),
        cpu_count=os.cpu_count(),
        platform=platform.platform(),
        rows=rows,
    )
    os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
    with open(a.out, "w") as fh:
        json.dump(result, fh, indent=1)
    print(
        f"{a.preset}: batch {B} pairs, K=5, budget side1 {budget.n_node1} / side2 {budget.n_node2} atoms, "
        f"median of {a.repeats} after compilation, {jax.devices()[0].platform}"
    )
    print(
        "| variant | env atom slots | ms / batch | environments / s | compile s |\n|---|---:|---:|---:|---:|"
    )
    for r in rows:
        print(
            f"| {r['variant']} | {r['env_slots']} | {r['median_ms']:.2f} | {r['envs_per_s']:,.0f} | {r['compile_s']:.1f} |"
        )
    print(f"written {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
