"""Training throughput of georecon_jax vs torchmd-net 3.1.0, side by side in one run.

  bash benchmarks/setup_torch_env.sh            # once: makes benchmarks/.torch_venv (torch CPU build)
  GEORECON_CACHE=/tmp/gcache /work/venv/bin/python -m benchmarks.throughput

Options: --sizes cpu,paper  --objectives coord,georecon  --rounds N  --steps-per-round N
--no-torch  --micro-batches M  --devices D  --precision highest|tf32  --torch-device auto|cpu|cuda
--out benchmarks/results/throughput_<backend>  (writes .json and .md)  --check-args (check them, exit).

On a GPU the same command runs both sides on the card (JAX's backend decides; torch follows with
--torch-device auto) and adds the card's name, its peak FLOP/s for the precision used and the
fraction of it achieved, and both sides' peak device memory. --precision highest (the default)
makes both sides multiply float32 matrices in full float32, as on CPU; tf32 lets both use TF32
tensor cores (JAX's own GPU default, torch's `set_float32_matmul_precision("high")`). Set
GEORECON_TORCH_PYTHON to a Python that has torch + torchmd-net 3.1.0 where there is no
benchmarks/.torch_venv (a GPU machine whose own Python holds torch).

What is measured, per (size, objective), on 960 QM9 training molecules, batch 32,
in a fixed order that both frameworks share (a seeded random sample of 960
QM9 training molecules in random order, 18 atoms on average like QM9, so that every batch is a
random batch as in training):
  * molecules/s: 32 / median of the timed steps (forward + backward + AdamW). JAX and torch
    run in alternating blocks ("rounds") of the same batches, so machine load hits both alike;
    the ratio is also given per round (median reported).
  * the JAX step is the project's own `make_train_step` (shard_map over a 1-device mesh) fed by
    the project's `Prefetcher` (host batches prepared in a background thread): the time of an
    iteration includes waiting for the next batch.
  * compile time (AOT `lower().compile()` of every padded shape the batches use), FLOPs per step
    from XLA's cost analysis (mean over the timed batches' shapes), achieved FLOP/s, peak RSS of
    both processes, the padded node / edge fractions, and the host input-pipeline rate
    (batches/s that `GraphBatcher.batch` + device placement sustain on one thread) against the
    step rate.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def torch_python() -> Path:
    """The Python that runs torch_reference.py: $GEORECON_TORCH_PYTHON (a path or a command on the
    PATH), else the benchmark's own environment benchmarks/.torch_venv."""
    name = os.environ.get("GEORECON_TORCH_PYTHON")
    return Path(shutil.which(name) or name) if name else HERE / ".torch_venv" / "bin" / "python"


TORCH_PYTHON = torch_python()
BATCH_SIZE = 32
NUM_MOLECULES = 960
SAMPLE_SEED = 0

# --precision: float32 matrix products on GPUs (CPUs always multiply in float32).
# bf16: one bfloat16 pass with float32 accumulation (positions, forces and losses stay float32).
JAX_PRECISION = {"highest": "highest", "tf32": "tensorfloat32", "bf16": "bfloat16"}
TORCH_PRECISION = {"highest": "highest", "tf32": "high", "bf16": "medium"}
LAYOUTS = ("pairs", "dense")

SIZES = {
    "cpu": dict(num_layers=4, features=128, num_heads=8, num_rbf=32, cutoff=5.0, trainable_rbf=False),
    "paper": dict(num_layers=8, features=256, num_heads=8, num_rbf=64, cutoff=5.0, trainable_rbf=False),
}


def make_config(objective: str, size: str, micro_batches: int, devices: int = 1, num_buckets: int = 0):
    from experiments.configs import coord, georecon

    cfg = (georecon if objective == "georecon" else coord).get_config()
    cfg.batch_size = BATCH_SIZE
    cfg.num_devices = devices
    cfg.model.encoder.update(SIZES[size])
    if micro_batches >= 0:
        cfg.micro_batches = micro_batches
    if num_buckets > 0:  # fewer padded shapes: less compile time (e.g. a short GPU session)
        cfg.graph.num_buckets = num_buckets
    if objective == "georecon":
        cfg.model.decoder.update(
            code_dim=SIZES[size]["features"], num_heads=SIZES[size]["num_heads"], num_rbf=32
        )
    cfg.optim.warmup_steps = 10
    return cfg


# Dense peak FLOP/s of the cards this benchmark may meet, from NVIDIA's data sheets: float32 on
# CUDA cores ("highest": what full-float32 products can use) and TF32 tensor cores ("tf32").
# Matched against jax's device_kind, first match wins (so "H100 PCIe" before "H100").
GPU_PEAK_FLOPS = [
    ("H100 PCIe", {"highest": 51.2e12, "tf32": 378e12, "bf16": 756e12}),
    ("H100", {"highest": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12}),  # SXM5
    ("H200", {"highest": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12}),
    ("A100", {"highest": 19.5e12, "tf32": 156e12, "bf16": 312e12}),
]


def accelerator_peak(device_kind: str, precision: str):
    """(peak FLOP/s, what it is) of a GPU for float32 products at ``precision``; (None, why) if unknown."""
    for name, peaks in GPU_PEAK_FLOPS:
        if name.lower() in device_kind.lower():
            basis = {
                "highest": "float32 CUDA cores",
                "tf32": "TF32 tensor cores",
                "bf16": "BF16 tensor cores",
            }[precision]
            return peaks[precision], f"{name} dense {basis}, NVIDIA data sheet"
    return None, f"no peak on record for {device_kind!r} (add it to GPU_PEAK_FLOPS)"


def measured_matmul_rate(precision: str = "highest", sizes=(512, 1024, 2048), repeats: int = 5) -> dict:
    """This machine's float32 matrix-product rate, measured now (the arithmetic limit the step's
    achieved FLOP/s is compared with): the best over ``sizes`` of the median of ``repeats`` jitted
    [n, n] x [n, n] products at ``precision``, in FLOP/s (2 n^3 per product)."""
    import jax
    import jax.numpy as jnp

    best, per_size = 0.0, {}
    for n in sizes:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
        f = jax.jit(lambda a, b: jnp.matmul(a, b, precision=JAX_PRECISION[precision]))
        f(a, b).block_until_ready()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            f(a, b).block_until_ready()
            times.append(time.perf_counter() - t)
        per_size[n] = 2 * n**3 / float(np.median(times))
        best = max(best, per_size[n])
    return {"flops_per_s": best, "per_size": {str(k): v for k, v in per_size.items()}, "precision": precision}


def device_peak_memory_mb():
    """Peak bytes in use on JAX's first device (accelerators; None on CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_description(torch_info=None, precision: str = "highest") -> dict:
    import flax
    import jax
    import jaxlib
    import optax

    backend = jax.default_backend()
    kind = jax.devices()[0].device_kind
    d = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "jax_backend": backend,
        "jax_devices": [str(x) for x in jax.devices()],
        "gpu": (kind if backend == "gpu" else "none: no GPU was available in this session; CPU numbers only"),
        "matmul_precision": precision,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average_at_start": os.getloadavg(),
    }
    if backend == "gpu":
        d["peak_flops_per_s"], d["peak_flops_source"] = accelerator_peak(kind, precision)
    if torch_info:
        d.update(torch_info)
    return d


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TorchWorker:
    """benchmarks/torch_reference.py in the torch venv, driven by JSON lines."""

    def __init__(self):
        if not TORCH_PYTHON.exists():
            raise FileNotFoundError(
                f"{TORCH_PYTHON} is missing: run bash benchmarks/setup_torch_env.sh "
                "(or set GEORECON_TORCH_PYTHON to a Python with torch + torchmd-net 3.1.0)"
            )
        # OpenMP's default spin-waiting makes torch 4-20x slower on a loaded machine (measured:
        # 2-17 s instead of 0.5 s per CPU-scale step); passive waiting gives it its best time.
        env = dict(os.environ, OMP_WAIT_POLICY=os.environ.get("OMP_WAIT_POLICY", "PASSIVE"))
        self.proc = subprocess.Popen(
            [str(TORCH_PYTHON), str(HERE / "torch_reference.py")],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            cwd=str(ROOT),
            env=env,
        )

    def call(self, **msg):
        self.proc.stdin.write(json.dumps(msg) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError("torch worker died (see its stderr above)")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(f"torch worker: {reply['error']}\n{reply.get('traceback', '')}")
        return reply

    def close(self):
        try:
            self.call(cmd="quit")
        except Exception:
            pass
        self.proc.wait(timeout=30)


def export_batches(batcher, num_batches: int, path: Path):
    """The real molecules of each JAX batch, in order, for the torch side."""
    zs, ps, bs, offsets = [], [], [], [0]
    for k in range(num_batches):
        g = batcher.batch(k)
        n_node = g.n_node[0]
        real = g.globals.graph_id[0] >= 0
        n_real = int(n_node[real].sum())
        zs.append(g.nodes.atomic_numbers[0][:n_real])
        ps.append(g.nodes.positions[0][:n_real])
        bs.append(np.repeat(np.arange(int(real.sum())), n_node[real]))
        offsets.append(offsets[-1] + n_real)
    np.savez(
        path,
        z=np.concatenate(zs),
        pos=np.concatenate(ps),
        batch=np.concatenate(bs),
        node_offsets=np.asarray(offsets),
    )


def input_pipeline_rate(batcher, place, num_batches: int) -> float:
    """Batches/s that one host thread prepares (pack + pad + device placement)."""
    t = time.perf_counter()
    for k in range(num_batches):
        place(batcher.batch(k))
    return num_batches / (time.perf_counter() - t)


class JaxBench:
    """The project's training step for one config, compiled ahead of time for every shape."""

    def __init__(self, cfg, molecules, indices, layout: str = "pairs"):
        import jax
        from georecon_jax.graphs.batching import GraphBatcher
        from georecon_jax.training.state import make_mesh, param_count, shard_batch
        from georecon_jax.tasks.pretrain import fresh_train_step, micro_batches

        self.jax = jax
        self.devices = cfg.num_devices
        self.micro_batches = micro_batches(cfg, self.devices)
        self.batcher = GraphBatcher(
            molecules,
            indices,
            BATCH_SIZE,
            num_devices=self.devices * self.micro_batches,
            shuffle=False,
            neighbor_list=cfg.graph.neighbor_list,
            cutoff=cfg.model.encoder.cutoff,
            skin=cfg.graph.skin,
            num_buckets=cfg.graph.num_buckets,
            seed=cfg.seed,
            layout=layout,
        )
        self.layout = layout
        self.mesh = make_mesh(self.devices)
        self.place = lambda b: shard_batch(b, self.mesh)
        self.trace_counter = []
        _, self.state, self.step_fn = fresh_train_step(
            cfg, self.batcher, self.mesh, jax.random.PRNGKey(cfg.seed), trace_counter=self.trace_counter
        )
        self.num_params = param_count(self.state.params)
        self.compiled, self.flops, self.bytes = {}, {}, {}
        self.compile_seconds = 0.0

    @staticmethod
    def shape_key(batch):
        return (batch.nodes.positions.shape, batch.senders.shape)

    def compile_all(self, num_batches: int):
        for k in range(num_batches):
            batch = self.place(self.batcher.batch(k))
            key = self.shape_key(batch)
            if key in self.compiled:
                continue
            t = time.perf_counter()
            compiled = self.step_fn.jitted.lower(self.state, batch, self.step_fn.base_key).compile()
            self.compile_seconds += time.perf_counter() - t
            cost = compiled.cost_analysis()
            cost = cost[0] if isinstance(cost, (list, tuple)) else cost
            self.compiled[key] = compiled
            self.flops[key] = float(cost.get("flops", float("nan")))
            self.bytes[key] = float(cost.get("bytes accessed", float("nan")))

    def step(self, batch):
        self.state, metrics = self.compiled[self.shape_key(batch)](self.state, batch, self.step_fn.base_key)
        return metrics

    def run(self, batch_ids):
        """Times each iteration: wait for the prefetched batch, step, block on the result."""
        from georecon_jax.training.prefetch import Prefetcher

        n = self.batcher.steps_per_epoch
        ids = list(batch_ids)
        pre = Prefetcher(lambda i: self.place(self.batcher.batch(ids[i] % n)), 0, len(ids))
        times, flops, loss = [], [], None
        try:
            for _ in ids:
                t = time.perf_counter()
                _, batch = pre.get()
                metrics = self.step(batch)
                loss = metrics["loss"]
                self.jax.block_until_ready(loss)
                times.append(time.perf_counter() - t)
                flops.append(self.flops[self.shape_key(batch)])
        finally:
            pre.close()
        return times, flops, float(loss)


def bench_one(size, objective, molecules, indices, args, torch_worker, npz_path):
    """One size and objective: the JAX step in every layout of ``args.layouts`` and torchmd-net,
    timed in alternating rounds over the same batches. Returns one result per layout (the torch
    numbers repeated in each)."""
    cfg = make_config(objective, size, args.micro_batches, args.devices, args.num_buckets)
    print(f"\n== {size} scale ({SIZES[size]}), {objective} ==", flush=True)
    benches = {}
    for layout in args.layouts:
        jb = JaxBench(cfg, molecules, indices, layout=layout)
        jb.compile_all(jb.batcher.steps_per_epoch)
        shapes = (
            jb.batcher.widths if layout == "dense" else [(b.n_node, b.n_edge) for b in jb.batcher.budgets]
        )
        print(
            f"jax {layout}: {jb.num_params:,} params; {jb.devices} device(s) x {jb.micro_batches} micro-batch(es) of "
            f"{BATCH_SIZE // (jb.devices * jb.micro_batches)} molecules; {len(jb.compiled)} shapes compiled in "
            f"{jb.compile_seconds:.1f} s ({'widths' if layout == 'dense' else 'budgets'} {shapes})",
            flush=True,
        )
        benches[layout] = jb
    nb = benches[args.layouts[0]].batcher.steps_per_epoch
    torch_info = {}
    if torch_worker is not None:
        t = time.perf_counter()
        torch_info = torch_worker.call(
            cmd="setup",
            npz=str(npz_path),
            objective=objective,
            decoder_num_rbf=32,
            decoder_num_layers=cfg.model.decoder.num_layers if objective == "georecon" else 1,
            code_dim=SIZES[size]["features"],
            learning_rate=4e-4,
            seed=0,
            device=args.torch_device,
            matmul_precision=TORCH_PRECISION[args.precision],
            **SIZES[size],
        )
        torch_info["setup_seconds"] = time.perf_counter() - t
        print(f"torch: {torch_info['num_params']:,} params", flush=True)
    # Warm-up: every shape has run once; a few more steps each side.
    for jb in benches.values():
        jb.run(range(min(args.warmup, nb)))
    if torch_worker is not None:
        torch_worker.call(cmd="run", batches=list(range(min(args.warmup, nb))))
    who_all = list(args.layouts) + (["torch"] if torch_worker is not None else [])
    times = {w: [] for w in who_all}
    flops = {w: [] for w in args.layouts}
    round_ratios = {w: [] for w in args.layouts}
    losses = {}
    traces_before = {w: len(jb.trace_counter) for w, jb in benches.items()}
    for r in range(args.rounds):
        ids = [(r * args.steps_per_round + i) % nb for i in range(args.steps_per_round)]
        order = who_all[r % len(who_all) :] + who_all[: r % len(who_all)]  # each side leads in turn
        med = {}
        for who in order:
            if who == "torch":
                tt = torch_worker.call(cmd="run", batches=ids)["times"]
            else:
                tt, ff, losses[who] = benches[who].run(ids)
                flops[who] += ff
            times[who] += tt
            med[who] = float(np.median(tt))
        for w in args.layouts:
            if "torch" in med:
                round_ratios[w].append(med["torch"] / med[w])
        print(
            f"  round {r}: "
            + "   ".join(f"{w} {BATCH_SIZE / med[w]:7.1f} mol/s" for w in who_all)
            + (
                "   ratios " + " ".join(f"{w} {round_ratios[w][-1]:.2f}" for w in args.layouts)
                if "torch" in med
                else ""
            ),
            flush=True,
        )
    out = []
    mem = torch_worker.call(cmd="rss") if torch_worker is not None else {}
    for layout, jb in benches.items():
        pad_nodes, pad_edges = jb.batcher.padding_fraction(nb)
        pipe_rate = input_pipeline_rate(jb.batcher, jb.place, nb)
        med_j = float(np.median(times[layout]))
        gflops = float(np.mean(flops[layout])) * jb.micro_batches * jb.devices / med_j / 1e9
        res = {
            "size": size,
            "objective": objective,
            "layout": layout,
            "devices": jb.devices,
            "micro_batches": jb.micro_batches,
            **SIZES[size],
            "batch_size": BATCH_SIZE,
            "num_molecules": NUM_MOLECULES,
            "jax_params": jb.num_params,
            "jax_mol_per_s": BATCH_SIZE / med_j,
            "jax_step_median_s": med_j,
            "jax_step_times_s": times[layout],
            "jax_final_loss": losses[layout],
            "jax_compile_seconds": jb.compile_seconds,
            "jax_num_shapes": len(jb.compiled),
            "jax_recompiles_after_warmup": len(jb.trace_counter) - traces_before[layout],
            # XLA's cost analysis is per device and counts a scan body once: scale by devices x
            # micro-batches (the AdamW update outside the scan, counted M times then, is < 1 % of a
            # step's FLOPs).
            "jax_flops_xla_cost_analysis": float(np.mean(flops[layout])),
            "jax_flops_per_step": float(np.mean(flops[layout])) * jb.micro_batches * jb.devices,
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
            "input_pipeline_over_step_rate": pipe_rate * med_j,
        }
        if args.peak_flops:
            res["jax_fraction_of_peak_flops"] = gflops * 1e9 / args.peak_flops
        if times.get("torch"):
            med_t = float(np.median(times["torch"]))
            res.update(
                {
                    "torch_params": torch_info["num_params"],
                    "torch_mol_per_s": BATCH_SIZE / med_t,
                    "torch_step_median_s": med_t,
                    "torch_step_times_s": times["torch"],
                    "torch_peak_rss_mb": mem["peak_rss_mb"],
                    "torch_peak_device_mb": mem.get("peak_device_mb"),
                    "ratio_jax_over_torch": med_t / med_j,
                    "ratio_per_round_median": float(np.median(round_ratios[layout])),
                    "ratio_per_round": round_ratios[layout],
                }
            )
        print(
            f"  => jax {layout} {res['jax_mol_per_s']:.1f} mol/s"
            + (
                f", torch {res['torch_mol_per_s']:.1f} mol/s, ratio {res['ratio_jax_over_torch']:.2f}"
                if times.get("torch")
                else ""
            )
            + f"; {res['jax_flops_per_step'] / 1e9:.2f} GFLOP/step, {gflops:.1f} GFLOP/s "
            f"({100 * res['jax_fraction_of_measured_matmul_rate']:.1f} % of the measured matmul rate); "
            f"padding {pad_nodes:.2f} atoms / {pad_edges:.2f} pairs; "
            f"pipeline {pipe_rate:.1f} batches/s = {res['input_pipeline_over_step_rate']:.1f}x step rate",
            flush=True,
        )
        out.append(res)
    return out


def markdown(results, machine) -> str:
    gpu = machine["jax_backend"] == "gpu"
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
    lines += [
        "| size | objective | layout | JAX micro-batches | JAX mol/s | torch mol/s | ratio | ratio (median of rounds) | compile s | "
        "GFLOP/step | GFLOP/s | % of measured matmul rate | padded atoms | padded pairs | input pipeline ÷ step rate | "
        "peak RSS JAX / torch MB |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    if gpu:
        lines[-2] += " % of peak FLOP/s | peak device memory JAX / torch MB |"
        lines[-1] += "---:|---:|"
    for r in results:
        lines.append(
            f"| {r['size']} ({r['num_layers']}×{r['features']}, {r['num_rbf']} RBF) | {r['objective']} | "
            f"{r.get('layout', 'pairs')} | {micro_batch_label(r)} | "
            f"{r['jax_mol_per_s']:.1f} | {r.get('torch_mol_per_s', float('nan')):.1f} | "
            f"{r.get('ratio_jax_over_torch', float('nan')):.2f} | {r.get('ratio_per_round_median', float('nan')):.2f} | "
            f"{r['jax_compile_seconds']:.1f} | {r['jax_flops_per_step'] / 1e9:.2f} | "
            f"{r['jax_achieved_gflop_per_s']:.1f} | {100 * r.get('jax_fraction_of_measured_matmul_rate', float('nan')):.1f} | "
            f"{r['padded_node_fraction']:.2f} | "
            f"{r['padded_edge_fraction']:.2f} | {r['input_pipeline_over_step_rate']:.1f} | "
            f"{r['jax_peak_rss_mb']:.0f} / {r.get('torch_peak_rss_mb', float('nan')):.0f} |"
        )
        if gpu:
            frac = r.get("jax_fraction_of_peak_flops")
            mb = [r.get("jax_peak_device_mb"), r.get("torch_peak_device_mb")]
            lines[-1] += (
                (f" {100 * frac:.2f} |" if frac else " – |")
                + " "
                + " / ".join(f"{x:.0f}" if x else "–" for x in mb)
                + " |"
            )
    lines += [
        "",
        "Peak RSS is the process peak so far (the JAX process runs the configurations in "
        "table order). Raw step times: the .json file beside this one.",
        "",
    ]
    return "\n".join(lines)


def micro_batch_label(r) -> str:
    """'M × m' (micro-batches × molecules each), prefixed by 'D dev ×' on several devices."""
    d = r.get("devices", 1)
    m = r["micro_batches"]
    return (f"{d} dev × " if d > 1 else "") + f"{m} × {BATCH_SIZE // (d * m)}"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
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
        ("--objectives", args.objectives, ("coord", "georecon")),
        ("--layouts", args.layouts, LAYOUTS),
    ):
        unknown = [x for x in given.split(",") if x not in valid]
        if unknown:
            p.error(f"{flag}: unknown {unknown}, use some of {','.join(valid)}")
    if args.check_args:
        return
    args.layouts = args.layouts.split(",")
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
        args.out = str(HERE / "results" / f"throughput_{'gpu' if backend == 'gpu' else 'cpu'}")
    args.matmul_rate = measured_matmul_rate(args.precision if backend != "cpu" else "highest")
    print(
        f"measured float32 matrix-product rate: {args.matmul_rate['flops_per_s'] / 1e9:.1f} GFLOP/s",
        flush=True,
    )
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
    torch_worker = None if args.no_torch else TorchWorker()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    npz_path = out.parent / ".torch_batches.npz"
    results = []

    def write(torch_info, partial):
        machine = machine_description(torch_info, args.precision)
        machine["measured_matmul_rate"] = args.matmul_rate
        machine["load_average_at_end"] = os.getloadavg()
        with open(str(out) + ".json", "w") as f:
            json.dump({"machine": machine, "complete": not partial, "results": results}, f, indent=1)
        md = markdown(results, machine)
        with open(str(out) + ".md", "w") as f:
            f.write(md)
        return md

    torch_info = {}
    try:
        from georecon_jax.graphs.batching import GraphBatcher

        export_batches(
            GraphBatcher(molecules, indices, BATCH_SIZE, shuffle=False), NUM_MOLECULES // BATCH_SIZE, npz_path
        )
        if torch_worker is not None:
            info = torch_worker.call(
                cmd="setup",
                npz=str(npz_path),
                objective="coord",
                num_layers=1,
                features=8,
                num_heads=2,
                num_rbf=4,
                cutoff=5.0,
                trainable_rbf=False,
                device=args.torch_device,
                matmul_precision=TORCH_PRECISION[args.precision],
            )
            torch_info = {
                "torch": info["torch"],
                "torch_threads": info["threads"],
                "torch_device": info["device"],
                "torch_matmul_precision": info["matmul_precision"],
                "torchmd_net": "3.1.0",
                "torch_omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
            }
        for size in args.sizes.split(","):
            for objective in args.objectives.split(","):
                results.extend(bench_one(size, objective, molecules, indices, args, torch_worker, npz_path))
                write(torch_info, partial=True)  # a result per configuration, as soon as it exists
    finally:
        if torch_worker is not None:
            torch_worker.close()
        if npz_path.exists():
            npz_path.unlink()
    print("\n" + write(torch_info, partial=False))


if __name__ == "__main__":
    main()
