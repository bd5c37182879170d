"""``python -m benchmarks.throughput``: the options, the run over sizes and objectives, its files."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

import benchmarks.throughput as package
from benchmarks.throughput.compare import bench_one
from benchmarks.throughput.machine import accelerator_peak, machine_description, measured_matmul_rate
from benchmarks.throughput.report import markdown
from benchmarks.throughput.settings import (
    BATCH_SIZE,
    BENCHMARKS,
    JAX_PRECISION,
    LAYOUTS,
    NUM_MOLECULES,
    OBJECTIVES,
    ROOT,
    SAMPLE_SEED,
    SIZES,
    TORCH_PRECISION,
)
from benchmarks.throughput.torch_side import TorchWorker, describe_torch, export_batches


def main(argv=None):
    args = parse_args(argv)
    if args.check_args:
        return
    configure(args)
    molecules, indices = sample_molecules()
    run(args, molecules, indices)


def parse_args(argv=None) -> argparse.Namespace:
    """The options, checked (an unknown size, objective or layout exits with status 2)."""
    p = argparse.ArgumentParser(
        description=package.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--sizes", default="cpu,paper")
    p.add_argument("--objectives", default="coord,georecon")
    p.add_argument("--rounds", type=int, default=6)
    p.add_argument("--steps-per-round", type=int, default=5)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--no-torch", action="store_true")
    p.add_argument("--num-buckets", type=int, default=0, help="padded shapes per layout (0: the config's)")
    p.add_argument("--layouts", default="pairs,dense", help="JAX batch layouts to time (pairs, dense)")
    p.add_argument(
        "--micro-batches",
        type=int,
        default=-1,
        help="config.micro_batches for the JAX step (-1: the config's own, automatic; "
        "1: the whole batch at once)",
    )
    p.add_argument(
        "--devices",
        type=int,
        default=1,
        help="data-parallel devices for the JAX step (on CPU, simulate them with "
        "XLA_FLAGS=--xla_force_host_platform_device_count=N)",
    )
    p.add_argument(
        "--precision",
        choices=sorted(TORCH_PRECISION),
        default="highest",
        help="float32 matrix products on GPUs, both sides: highest = full float32, "
        "tf32 = TF32 tensor cores, bf16 = one bfloat16 pass with float32 accumulation "
        "(no effect on CPU)",
    )
    p.add_argument(
        "--torch-device", default="auto", help="auto (cuda when JAX runs on a GPU, else cpu), cpu or cuda"
    )
    p.add_argument(
        "--out",
        default=None,
        help="output path without extension (default benchmarks/results/throughput_<backend>)",
    )
    p.add_argument(
        "--check-args",
        action="store_true",
        help="check the options and exit (benchmarks/run.sh, before anything long)",
    )
    args = p.parse_args(argv)
    for flag, given, valid in (
        ("--sizes", args.sizes, SIZES),
        ("--objectives", args.objectives, OBJECTIVES),
        ("--layouts", args.layouts, LAYOUTS),
    ):
        unknown = [x for x in given.split(",") if x not in valid]
        if unknown:
            p.error(f"{flag}: unknown {unknown}, use some of {','.join(valid)}")
    args.layouts = args.layouts.split(",")
    return args


def configure(args):
    """JAX's matrix-product precision, torch's device, the GPU's peak, the output path and this
    machine's measured matrix-product rate (added to ``args``)."""
    sys.path.insert(0, str(ROOT))
    import jax

    backend = jax.default_backend()
    if backend != "cpu":  # XLA:CPU multiplies float32 in float32 whatever the setting
        jax.config.update("jax_default_matmul_precision", JAX_PRECISION[args.precision])
    if args.torch_device == "auto":
        args.torch_device = "cuda" if backend == "gpu" else "cpu"
    args.peak_flops = (
        accelerator_peak(jax.devices()[0].device_kind, args.precision)[0] if backend == "gpu" else None
    )
    if args.out is None:
        args.out = str(BENCHMARKS / "results" / f"throughput_{'gpu' if backend == 'gpu' else 'cpu'}")
    args.matmul_rate = measured_matmul_rate(args.precision if backend != "cpu" else "highest")
    print(
        f"measured float32 matrix-product rate: {args.matmul_rate['flops_per_s'] / 1e9:.1f} GFLOP/s",
        flush=True,
    )


def sample_molecules():
    """(QM9 molecules, the benchmark's NUM_MOLECULES training molecules in random order)."""
    from georecon_jax.data.qm9 import load_qm9

    molecules, splits = load_qm9(cache_dir=os.environ.get("GEORECON_CACHE"), split_seed=0, verbose=False)
    # A seeded random sample in random order, so that consecutive batches are random batches as
    # in training (shuffled). The split's first molecules are QM9's smallest (12.8 atoms on
    # average against 18.0 for the whole set), which would flatter every implementation; and a
    # sorted sample makes batches of similar molecules (QM9 is ordered by size), which pad worse
    # than training batches do (28 % of pairs padding, 8 of the first 30 steps at the worst-case
    # shape, against 12 % and none for random batches).
    indices = np.random.default_rng(SAMPLE_SEED).choice(
        np.asarray(splits["train"]), NUM_MOLECULES, replace=False
    )
    return molecules, indices


def run(args, molecules, indices):
    """Every size x objective; the .json and .md files are rewritten after each (``complete``
    false until the last), and the table is printed at the end."""
    from georecon_jax.graphs.batching import GraphBatcher

    torch_worker = None if args.no_torch else TorchWorker()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    npz_path = out.parent / ".torch_batches.npz"
    results, torch_info = [], {}
    try:
        batcher = GraphBatcher(molecules, indices, BATCH_SIZE, shuffle=False)
        export_batches(batcher, NUM_MOLECULES // BATCH_SIZE, npz_path)
        if torch_worker is not None:
            torch_info = describe_torch(torch_worker, npz_path, args)
        for size in args.sizes.split(","):
            for objective in args.objectives.split(","):
                results.extend(bench_one(size, objective, molecules, indices, args, torch_worker, npz_path))
                write(out, results, torch_info, args, partial=True)  # a result per configuration, at once
    finally:
        if torch_worker is not None:
            torch_worker.close()
        if npz_path.exists():
            npz_path.unlink()
    print("\n" + write(out, results, torch_info, args, partial=False))


def write(out: Path, results, torch_info, args, partial: bool) -> str:
    """``out``.json (machine, results, complete?) and ``out``.md; returns the Markdown."""
    machine = machine_description(torch_info, args.precision)
    machine["measured_matmul_rate"] = args.matmul_rate
    machine["load_average_at_end"] = os.getloadavg()
    with open(str(out) + ".json", "w") as f:
        json.dump({"machine": machine, "complete": not partial, "results": results}, f, indent=1)
    md = markdown(results, machine)
    with open(str(out) + ".md", "w") as f:
        f.write(md)
    return md
