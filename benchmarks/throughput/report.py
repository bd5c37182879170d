"""The Markdown table of a run (beside its .json)."""

from __future__ import annotations

from benchmarks.throughput.settings import BATCH_SIZE

NAN = float("nan")


def markdown(results, machine) -> str:
    gpu = machine["jax_backend"] == "gpu"
    lines = header(machine, gpu) + table_head(gpu) + [row(r, gpu) for r in results]
    lines += [
        "",
        "Peak RSS is the process peak so far (the JAX process runs the configurations in "
        "table order). Raw step times: the .json file beside this one.",
        "",
    ]
    return "\n".join(lines)


def header(machine, gpu: bool) -> list:
    """The title, the machine and what is measured."""
    where = f"GPU, {machine['gpu']}" if gpu else "CPU"
    lines = [
        f"# Training throughput, {where} ({machine['date']})",
        "",
        f"{machine['cpu_model']}, {machine['logical_cores']} logical cores ("
        f"load average at start {machine['load_average_at_start'][0]:.1f}); jax {machine['jax']}, "
        f"torch {machine.get('torch', '-')} on {machine.get('torch_device', 'cpu')}, torchmd-net 3.1.0. "
        f"{machine['gpu']}.",
        "",
        "Batch 32, 960 QM9 training molecules (a seeded random sample, in random order), forward + backward + AdamW; "
        "molecules/s = 32 / median step; JAX and torch timed in alternating rounds in one run. "
        "Encoder radial basis fixed on both sides (trainable_rbf=False, as in Coord's config). "
        f"float32 matrix products: {machine['matmul_precision']} on both sides. "
        f"Measured matrix-product rate of this machine in this run: "
        f"{machine['measured_matmul_rate']['flops_per_s'] / 1e9:.1f} GFLOP/s (best of square float32 products, "
        f"{machine['measured_matmul_rate']['precision']}); '% of measured matmul rate' is the step's achieved rate over it. "
        "Layouts: 'pairs' = the unordered-pair list; 'dense' = [B, N, N] per-molecule pair tensors (issue 18).",
        "",
    ]
    if gpu:
        peak = machine.get("peak_flops_per_s")
        lines += [
            f"Peak: {peak / 1e12:.1f} TFLOP/s ({machine['peak_flops_source']})."
            if peak
            else f"Peak: {machine['peak_flops_source']}.",
            "",
        ]
    return lines


def table_head(gpu: bool) -> list:
    names = (
        "| size | objective | layout | JAX micro-batches | JAX mol/s | torch mol/s | ratio | ratio (median of rounds) | compile s | "
        "GFLOP/step | GFLOP/s | % of measured matmul rate | padded atoms | padded pairs | input pipeline ÷ step rate | "
        "peak RSS JAX / torch MB |"
    )
    rule = "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    if gpu:
        names += " % of peak FLOP/s | peak device memory JAX / torch MB |"
        rule += "---:|---:|"
    return [names, rule]


def row(r: dict, gpu: bool) -> str:
    line = (
        f"| {r['size']} ({r['num_layers']}×{r['features']}, {r['num_rbf']} RBF) | {r['objective']} | "
        f"{r.get('layout', 'pairs')} | {micro_batch_label(r)} | "
        f"{r['jax_mol_per_s']:.1f} | {r.get('torch_mol_per_s', NAN):.1f} | "
        f"{r.get('ratio_jax_over_torch', NAN):.2f} | {r.get('ratio_per_round_median', NAN):.2f} | "
        f"{r['jax_compile_seconds']:.1f} | {r['jax_flops_per_step'] / 1e9:.2f} | "
        f"{r['jax_achieved_gflop_per_s']:.1f} | {100 * r.get('jax_fraction_of_measured_matmul_rate', NAN):.1f} | "
        f"{r['padded_node_fraction']:.2f} | "
        f"{r['padded_edge_fraction']:.2f} | {r['input_pipeline_over_step_rate']:.1f} | "
        f"{r['jax_peak_rss_mb']:.0f} / {r.get('torch_peak_rss_mb', NAN):.0f} |"
    )
    if gpu:
        frac = r.get("jax_fraction_of_peak_flops")
        memory = [r.get("jax_peak_device_mb"), r.get("torch_peak_device_mb")]
        line += (f" {100 * frac:.2f} |" if frac else " – |") + " "
        line += " / ".join(f"{x:.0f}" if x else "–" for x in memory) + " |"
    return line


def micro_batch_label(r) -> str:
    """'M × m' (micro-batches × molecules each), prefixed by 'D dev ×' on several devices."""
    d = r.get("devices", 1)
    m = r["micro_batches"]
    return (f"{d} dev × " if d > 1 else "") + f"{m} × {BATCH_SIZE // (d * m)}"
