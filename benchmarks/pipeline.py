"""How fast the host prepares training batches, against how fast the device consumes them.

For Coord and GeoRecon pretraining batches of real QM9 molecules (the throughput benchmark's
sample and model sizes), both layouts, it measures molecules/s of batch preparation with the
background thread (``data.workers=0``) and with 1 and 2 worker processes (grain), the training
step rate of the same config on this machine, their ratio, and the memory of the process and
its workers (peak RSS of each; total RSS and PSS sampled while the workers run: PSS counts a page
shared by N processes as 1/N). The per-worker rate gives the cores a host needs to feed its
accelerators (``--target`` molecules/s).

    python -m benchmarks.pipeline [--batches 60] [--size cpu] [--out benchmarks/results/pipeline_cpu]

Writes ``<out>.json`` and ``<out>.md``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import threading
import time
from pathlib import Path

import numpy as np

from benchmarks.throughput.settings import LAYOUTS, OBJECTIVES, ROOT

# issue target: 8 x an H200's measured per-device Coord step rate at 4 x 128 (5,172 molecules/s)
H200_COORD_RATE = 5172.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=3000, help="batches timed per measurement")
    p.add_argument("--warm", type=int, default=500, help="batches made before the clock starts")
    p.add_argument("--steps", type=int, default=30, help="training steps timed per config")
    p.add_argument("--size", default="cpu", choices=("cpu", "paper"), help="model size (step rate)")
    p.add_argument("--workers", default="0,1,2", help="comma-separated data.workers values")
    p.add_argument("--batch-sizes", default="32", help="comma-separated batch sizes")
    p.add_argument("--precision", default="highest", choices=("highest", "tf32", "bf16"), help="GPU matmuls")
    p.add_argument("--objectives", default=",".join(OBJECTIVES))
    p.add_argument("--layouts", default=",".join(LAYOUTS))
    p.add_argument("--target", type=float, default=8 * H200_COORD_RATE, help="molecules/s per host")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "pipeline_cpu"))
    return p.parse_args(argv)


def _tree_pids(pid: int):
    """``pid`` and its descendants (grain starts its workers from a thread: scan every process)."""
    parent = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                parent[int(d.name)] = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                pass
    out, frontier = [pid], [pid]
    while frontier:
        frontier = [c for c, p in parent.items() if p in frontier]
        out += frontier
    return out


def _memory_mb(pids):
    """(total RSS, total PSS, total anonymous) in MB of the processes (Linux /proc; 0 where
    unreadable). RSS counts a shared library once per process that maps it; PSS divides it among
    them; anonymous memory is each process's own (heap, arrays), what a worker really adds."""
    rss = pss = anon = 0.0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += float(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss += float(line.split()[1]) / 1024
                elif line.startswith("Anonymous:"):
                    anon += float(line.split()[1]) / 1024
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return rss, pss, anon


class MemorySampler:
    """The largest total RSS, PSS and anonymous memory of this process and its children, sampled
    every 0.2 s."""

    def __init__(self):
        self.rss = self.pss = self.anon = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                rss, pss, anon = _memory_mb(_tree_pids(os.getpid()))
            except (FileNotFoundError, ProcessLookupError):
                rss = pss = anon = 0.0
            self.rss, self.pss, self.anon = max(self.rss, rss), max(self.pss, pss), max(self.anon, anon)
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def preparation_rate(batcher, workers: int, num_batches: int, warm: int = 0) -> dict:
    """Molecules/s of ``num_batches`` batches pulled from a `Prefetcher` as fast as it makes them,
    after ``warm`` batches that are not timed (worker start-up: spawned workers reach their steady
    rate a few seconds after their first batch); at most 2 batches wait in the prefetcher, so the
    rate is the steady one. Also the memory of the process tree while it ran."""
    from georecon_jax.training.prefetch import Prefetcher

    t0 = time.perf_counter()
    with MemorySampler() as mem:
        fetcher = Prefetcher(batcher.batch, 0, warm + num_batches + 1, depth=2, workers=workers)
        try:
            fetcher.get()
            first = time.perf_counter()
            for _ in range(warm):
                fetcher.get()
            start = time.perf_counter()
            for _ in range(num_batches):
                fetcher.get()
            seconds = time.perf_counter() - start
        finally:
            fetcher.close()
    return {
        "workers": workers,
        "molecules_per_s": num_batches * batcher.batch_size / seconds,
        "startup_s": first - t0,
        "warm_up_batches": warm,
        "warm_up_s": start - first,
        "total_rss_mb": mem.rss,
        "total_pss_mb": mem.pss,
        "total_anonymous_mb": mem.anon,
    }


def make_batcher(cfg, molecules, indices, layout: str):
    """The training batcher of ``cfg`` (devices x micro-batches as in tasks.pretrain)."""
    from georecon_jax.graphs.batching import GraphBatcher
    from georecon_jax.tasks.pretrain import micro_batches

    return GraphBatcher(
        molecules,
        indices,
        cfg.batch_size,
        num_devices=micro_batches(cfg, 1),
        shuffle=True,
        neighbor_list=cfg.graph.neighbor_list,
        cutoff=cfg.model.encoder.cutoff,
        num_buckets=cfg.graph.num_buckets,
        layout=layout,
    )


def step_rate(cfg, batcher, num_steps: int) -> float:
    """Molecules/s of the training step alone on one device (every shape compiled and every
    batch made first)."""
    import jax

    from georecon_jax.tasks.pretrain import fresh_train_step
    from georecon_jax.training.state import make_mesh, shard_batch

    mesh = make_mesh(1)
    _, state, step = fresh_train_step(cfg, batcher, mesh, jax.random.PRNGKey(cfg.seed))
    batches = [shard_batch(batcher.batch(k), mesh) for k in range(num_steps)]
    for b in batches:  # compiles each padded shape
        state, metrics = step(state, b)
    jax.block_until_ready(metrics["loss"])
    t = time.perf_counter()
    for b in batches:
        state, metrics = step(state, b)
    jax.block_until_ready(metrics["loss"])
    return num_steps * cfg.batch_size / (time.perf_counter() - t)


def run(args) -> dict:
    import jax
    from absl import flags

    from benchmarks.throughput.cli import sample_molecules
    from benchmarks.throughput.settings import JAX_PRECISION, make_config

    flags.FLAGS.mark_as_parsed()
    if jax.default_backend() != "cpu":  # XLA:CPU multiplies float32 in float32 whatever the setting
        jax.config.update("jax_default_matmul_precision", JAX_PRECISION[args.precision])
    molecules, indices = sample_molecules()
    workers = [int(w) for w in args.workers.split(",")]
    rows = []
    for batch_size in [int(b) for b in args.batch_sizes.split(",")]:
        for objective in args.objectives.split(","):
            for layout in args.layouts.split(","):
                cfg = make_config(objective, args.size, micro_batches=-1)
                cfg.batch_size = batch_size
                batcher = make_batcher(cfg, molecules, indices, layout)
                steps = step_rate(cfg, batcher, args.steps)
                for w in workers:
                    r = preparation_rate(batcher, w, args.batches, args.warm)
                    r.update(objective=objective, layout=layout, batch_size=batch_size)
                    r.update(step_molecules_per_s=steps, ratio_to_step=r["molecules_per_s"] / steps)
                    rows.append(r)
                    print(
                        f"{objective:8s} {layout:5s} batch {batch_size} workers={w}: "
                        f"{r['molecules_per_s']:8.0f} molecules/s ({r['ratio_to_step']:.2f}x the step's "
                        f"{steps:.0f}); RSS {r['total_rss_mb']:.0f} MB, PSS {r['total_pss_mb']:.0f} MB; "
                        f"start-up {r['startup_s']:.1f} s",
                        flush=True,
                    )
    return {
        "command": "python -m benchmarks.pipeline "
        + " ".join(f"--{k.replace('_', '-')}={v}" for k, v in vars(args).items()),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpu_cores": os.cpu_count(),
            "arch": platform.machine(),
            "backend": jax.default_backend(),
            "devices": [d.device_kind for d in jax.local_devices()],
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "load_average_at_end": os.getloadavg(),
        },
        "precision": args.precision,
        "model_size": args.size,
        "peak_rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": rows,
        "host_target": per_host(rows, args.target),
    }


def per_host(rows, target: float) -> dict:
    """The cores a host needs for ``target`` molecules/s, per objective, layout and batch: from the
    best measured rate per worker (rate / workers over the runs with workers), one core per worker
    plus two for the training process."""
    out = {"target_molecules_per_s": target}
    for r in rows:
        if r["workers"] >= 1:
            key = f"{r['objective']}/{r['layout']}/batch {r['batch_size']}"
            per = r["molecules_per_s"] / r["workers"]
            if per > out.get(key, {}).get("per_worker_molecules_per_s", 0.0):
                need = int(np.ceil(target / per))
                out[key] = {
                    "per_worker_molecules_per_s": per,
                    "from_workers": r["workers"],
                    "workers_needed": need,
                    "cores_needed": need + 2,
                }
    return out


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"# Batch preparation against the training step ({res['date']})",
        "",
        f"Machine: {m['cpu_cores']} CPU cores ({m['arch']}), {m['memory_gb']} GB, JAX backend "
        f"{m['backend']} ({', '.join(sorted(set(m['devices'])))}); load average at the end "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_at_end'])}. Model size {res['model_size']}, "
        f"matmul precision {res['precision']}, real QM9 molecules (a random sample of 960).",
        "",
        f"Command: `{res['command']}`",
        "",
        "| objective | layout | batch | workers | batches (molecules/s) | step (molecules/s) | ratio | "
        "RSS all processes (MB) | PSS all processes (MB) | anonymous all processes (MB) | "
        "worker start-up (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['objective']} | {r['layout']} | {r['batch_size']} | {r['workers']} | {r['molecules_per_s']:.0f} | "
            f"{r['step_molecules_per_s']:.0f} | {r['ratio_to_step']:.2f} | {r['total_rss_mb']:.0f} | "
            f"{r['total_pss_mb']:.0f} | {r['total_anonymous_mb']:.0f} | {r['startup_s']:.1f} |"
        )
    t = res["host_target"]
    lines += [
        "",
        f"Cores a host needs for {t['target_molecules_per_s']:.0f} molecules/s (the best rate per worker):",
        "",
    ]
    for key, v in t.items():
        if isinstance(v, dict):
            lines.append(
                f"- {key}: {v['per_worker_molecules_per_s']:.0f} molecules/s per worker (with "
                f"{v['from_workers']}): "
                f"{v['workers_needed']} workers, {v['cores_needed']} cores"
            )
    return "\n".join(lines) + "\n"


def main(argv=None):
    args = parse_args(argv)
    res = run(args)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(res, indent=1))
    out.with_suffix(".md").write_text(markdown(res))
    print(f"wrote {out.with_suffix('.md')} and .json")


if __name__ == "__main__":
    main()
