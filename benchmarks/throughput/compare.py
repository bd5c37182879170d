"""One size and objective: the JAX step in each layout and torchmd-net, timed in alternating rounds
over the same batches, and one result per layout."""

from __future__ import annotations

import dataclasses
from typing import Dict, List

import numpy as np

from benchmarks.throughput.jax_side import JaxBench, input_pipeline_rate
from benchmarks.throughput.machine import device_peak_memory_mb, peak_rss_mb
from benchmarks.throughput.settings import BATCH_SIZE, NUM_MOLECULES, SIZES, make_config
from benchmarks.throughput.torch_side import set_up_model


@dataclasses.dataclass
class Rounds:
    """What the timed rounds measured, per side ('torch' or a JAX layout)."""

    times: Dict[str, List[float]]  # step seconds
    flops: Dict[str, List[float]]  # XLA's FLOPs of each timed JAX step
    ratios: Dict[str, List[float]]  # per round: torch's median step / the layout's
    losses: Dict[str, float]  # the last JAX loss


def bench_one(size, objective, molecules, indices, args, torch_worker, npz_path):
    """One size and objective: the JAX step in every layout of ``args.layouts`` and torchmd-net,
    timed in alternating rounds over the same batches. Returns one result per layout (the torch
    numbers repeated in each)."""
    cfg = make_config(objective, size, args.micro_batches, args.devices, args.num_buckets)
    print(f"\n== {size} scale ({SIZES[size]}), {objective} ==", flush=True)
    benches = build_benches(cfg, molecules, indices, args.layouts)
    num_batches = benches[args.layouts[0]].batcher.steps_per_epoch
    torch_info = {}
    if torch_worker is not None:
        torch_info = set_up_model(torch_worker, cfg, size, objective, npz_path, args)
        print(f"torch: {torch_info['num_params']:,} params", flush=True)
    warm_up(benches, torch_worker, min(args.warmup, num_batches))
    traces_before = {layout: len(jb.trace_counter) for layout, jb in benches.items()}
    rounds = timed_rounds(benches, torch_worker, args, num_batches)
    memory = torch_worker.call(cmd="rss") if torch_worker is not None else {}
    out = []
    for layout, jb in benches.items():
        recompiles = len(jb.trace_counter) - traces_before[layout]
        res = layout_result(size, objective, layout, jb, rounds, num_batches, recompiles, args)
        if args.peak_flops:
            res["jax_fraction_of_peak_flops"] = res["jax_achieved_gflop_per_s"] * 1e9 / args.peak_flops
        if rounds.times.get("torch"):
            res.update(torch_result(torch_info, memory, rounds, layout, res["jax_step_median_s"]))
        print(summary_line(res), flush=True)
        out.append(res)
    return out


def build_benches(cfg, molecules, indices, layouts) -> Dict[str, JaxBench]:
    """A compiled `JaxBench` per layout, each described in one line."""
    benches = {}
    for layout in layouts:
        jb = JaxBench(cfg, molecules, indices, layout=layout)
        jb.compile_all(jb.batcher.steps_per_epoch)
        dense = layout == "dense"
        shapes = jb.batcher.widths if dense else [(b.n_node, b.n_edge) for b in jb.batcher.budgets]
        print(
            f"jax {layout}: {jb.num_params:,} params; {jb.devices} device(s) x {jb.micro_batches} micro-batch(es) of "
            f"{BATCH_SIZE // (jb.devices * jb.micro_batches)} molecules; {len(jb.compiled)} shapes compiled in "
            f"{jb.compile_seconds:.1f} s ({'widths' if dense else 'budgets'} {shapes})",
            flush=True,
        )
        benches[layout] = jb
    return benches


def warm_up(benches, torch_worker, num_batches: int):
    """Every shape has run once (compilation); a few more steps each side."""
    for jb in benches.values():
        jb.run(range(num_batches))
    if torch_worker is not None:
        torch_worker.call(cmd="run", batches=list(range(num_batches)))


def timed_rounds(benches, torch_worker, args, num_batches: int) -> Rounds:
    """``args.rounds`` rounds of ``args.steps_per_round`` batches, each side in turn (each side
    leads in turn), so that the machine's load hits all alike."""
    sides = list(args.layouts) + (["torch"] if torch_worker is not None else [])
    rounds = Rounds({s: [] for s in sides}, {s: [] for s in args.layouts}, {s: [] for s in args.layouts}, {})
    for r in range(args.rounds):
        ids = [(r * args.steps_per_round + i) % num_batches for i in range(args.steps_per_round)]
        median = {}
        for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
            if side == "torch":
                times = torch_worker.call(cmd="run", batches=ids)["times"]
            else:
                times, flops, rounds.losses[side] = benches[side].run(ids)
                rounds.flops[side] += flops
            rounds.times[side] += times
            median[side] = float(np.median(times))
        if "torch" in median:
            for layout in args.layouts:
                rounds.ratios[layout].append(median["torch"] / median[layout])
        line = f"  round {r}: " + "   ".join(f"{s} {BATCH_SIZE / median[s]:7.1f} mol/s" for s in sides)
        if "torch" in median:
            line += "   ratios " + " ".join(f"{s} {rounds.ratios[s][-1]:.2f}" for s in args.layouts)
        print(line, flush=True)
    return rounds


def layout_result(
    size, objective, layout, jb, rounds: Rounds, num_batches: int, recompiles: int, args
) -> dict:
    """The JAX numbers of one layout (``recompiles``: traces of its step after the warm-up)."""
    pad_nodes, pad_edges = jb.batcher.padding_fraction(num_batches)
    pipe_rate = input_pipeline_rate(jb.batcher, jb.place, num_batches)
    step = float(np.median(rounds.times[layout]))
    flops = float(np.mean(rounds.flops[layout]))
    gflops = flops * jb.micro_batches * jb.devices / step / 1e9
    return {
        "size": size,
        "objective": objective,
        "layout": layout,
        "devices": jb.devices,
        "micro_batches": jb.micro_batches,
        **SIZES[size],
        "batch_size": BATCH_SIZE,
        "num_molecules": NUM_MOLECULES,
        "jax_params": jb.num_params,
        "jax_mol_per_s": BATCH_SIZE / step,
        "jax_step_median_s": step,
        "jax_step_times_s": rounds.times[layout],
        "jax_final_loss": rounds.losses[layout],
        "jax_compile_seconds": jb.compile_seconds,
        "jax_num_shapes": len(jb.compiled),
        "jax_recompiles_after_warmup": recompiles,
        # XLA's cost analysis is per device and counts a scan body once: scale by devices x
        # micro-batches (the AdamW update outside the scan, counted M times then, is < 1 % of a
        # step's FLOPs).
        "jax_flops_xla_cost_analysis": flops,
        "jax_flops_per_step": flops * jb.micro_batches * jb.devices,
        "jax_bytes_accessed_per_step": float(np.mean([jb.bytes[k] for k in jb.bytes])),
        "jax_achieved_gflop_per_s": gflops,
        "jax_fraction_of_measured_matmul_rate": gflops * 1e9 / args.matmul_rate["flops_per_s"],
        "jax_peak_rss_mb": peak_rss_mb(),
        "jax_peak_device_mb": device_peak_memory_mb(),
        "padded_node_fraction": pad_nodes,
        "padded_edge_fraction": pad_edges,
        "budgets": [(b.n_node, b.n_edge, b.n_graph) for b in jb.batcher.budgets],
        "dense_widths": jb.batcher.widths,
        "input_pipeline_batches_per_s": pipe_rate,
        "input_pipeline_over_step_rate": pipe_rate * step,
    }


def torch_result(torch_info: dict, memory: dict, rounds: Rounds, layout: str, jax_step: float) -> dict:
    """torch's numbers, and its ratio to the JAX layout's."""
    step = float(np.median(rounds.times["torch"]))
    return {
        "torch_params": torch_info["num_params"],
        "torch_mol_per_s": BATCH_SIZE / step,
        "torch_step_median_s": step,
        "torch_step_times_s": rounds.times["torch"],
        "torch_peak_rss_mb": memory["peak_rss_mb"],
        "torch_peak_device_mb": memory.get("peak_device_mb"),
        "ratio_jax_over_torch": step / jax_step,
        "ratio_per_round_median": float(np.median(rounds.ratios[layout])),
        "ratio_per_round": rounds.ratios[layout],
    }


def summary_line(res: dict) -> str:
    torch = (
        f", torch {res['torch_mol_per_s']:.1f} mol/s, ratio {res['ratio_jax_over_torch']:.2f}"
        if "torch_mol_per_s" in res
        else ""
    )
    return (
        f"  => jax {res['layout']} {res['jax_mol_per_s']:.1f} mol/s{torch}; "
        f"{res['jax_flops_per_step'] / 1e9:.2f} GFLOP/step, {res['jax_achieved_gflop_per_s']:.1f} GFLOP/s "
        f"({100 * res['jax_fraction_of_measured_matmul_rate']:.1f} % of the measured matmul rate); "
        f"padding {res['padded_node_fraction']:.2f} atoms / {res['padded_edge_fraction']:.2f} pairs; "
        f"pipeline {res['input_pipeline_batches_per_s']:.1f} batches/s = "
        f"{res['input_pipeline_over_step_rate']:.1f}x step rate"
    )
