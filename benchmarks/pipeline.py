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

from benchmarks.throughput.settings import BATCH_SIZE, LAYOUTS, OBJECTIVES, ROOT

# issue target: 8 x an H200's measured per-device Coord step rate at 4 x 128 (5,172 molecules/s)
H200_COORD_RATE = 5172.0


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--batches", type=int, default=200, help="batches timed per measurement")
    p.add_argument("--steps", type=int, default=30, help="training steps timed per config")
    p.add_argument("--size", default="cpu", choices=("cpu", "paper"), help="model size (step rate)")
    p.add_argument("--workers", default="0,1,2", help="comma-separated data.workers values")
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
    """(total RSS, total PSS) in MB of the processes (Linux /proc; 0 where unreadable)."""
    rss = pss = 0.0
    for pid in pids:
        try:
            for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss += float(line.split()[1]) / 1024
                elif line.startswith("Pss:"):
                    pss += float(line.split()[1]) / 1024
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            pass
    return rss, pss


class MemorySampler:
    """The largest total RSS and PSS of this process and its children, sampled every 0.2 s."""

    def __init__(self):
        self.rss = self.pss = 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            try:
                rss, pss = _memory_mb(_tree_pids(os.getpid()))
            except (FileNotFoundError, ProcessLookupError):
                rss = pss = 0.0
            self.rss, self.pss = max(self.rss, rss), max(self.pss, pss)
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def preparation_rate(batcher, workers: int, num_batches: int) -> dict:
    """Molecules/s of ``num_batches`` batches pulled from a `Prefetcher` as fast as it makes them
    (its start-up excluded: the clock starts at the first batch; at most 2 batches wait, so the
    rate is the steady one within 2/num_batches), and the memory while it ran."""
    from georecon_jax.training.prefetch import Prefetcher

    t0 = time.perf_counter()
    with MemorySampler() as mem:
        fetcher = Prefetcher(batcher.batch, 0, num_batches + 1, depth=2, workers=workers)
        try:
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
        "startup_s": start - t0,
        "total_rss_mb": mem.rss,
        "total_pss_mb": mem.pss,
    }


def step_rate(cfg, molecules, indices, layout: str, num_steps: int) -> float:
    """Molecules/s of the training step alone (compiled for every shape first, batches made before)."""
    from benchmarks.throughput.jax_side import JaxBench

    bench = JaxBench(cfg, molecules, indices, layout)
    n = min(num_steps, bench.batcher.steps_per_epoch)
    bench.compile_all(n)
    batches = [bench.place(bench.batcher.batch(k)) for k in range(n)]
    bench.jax.block_until_ready(bench.step(batches[0])["loss"])
    t = time.perf_counter()
    for b in batches:
        loss = bench.step(b)["loss"]
    bench.jax.block_until_ready(loss)
    return n * BATCH_SIZE / (time.perf_counter() - t)


def run(args) -> dict:
    import jax
    from absl import flags

    from benchmarks.throughput.cli import sample_molecules
    from benchmarks.throughput.settings import make_config
    from georecon_jax.graphs.batching import GraphBatcher

    flags.FLAGS.mark_as_parsed()
    molecules, indices = sample_molecules()
    workers = [int(w) for w in args.workers.split(",")]
    rows = []
    for objective in args.objectives.split(","):
        for layout in args.layouts.split(","):
            cfg = make_config(objective, args.size, micro_batches=1)
            batcher = GraphBatcher(
                molecules,
                indices,
                BATCH_SIZE,
                shuffle=True,
                neighbor_list=cfg.graph.neighbor_list,
                cutoff=cfg.model.encoder.cutoff,
                num_buckets=cfg.graph.num_buckets,
                layout=layout,
            )
            steps = step_rate(cfg, molecules, indices, layout, args.steps)
            for w in workers:
                r = preparation_rate(batcher, w, args.batches)
                r.update(objective=objective, layout=layout, step_molecules_per_s=steps)
                r["ratio_to_step"] = r["molecules_per_s"] / steps
                rows.append(r)
                print(
                    f"{objective:8s} {layout:5s} workers={w}: {r['molecules_per_s']:8.0f} molecules/s "
                    f"({r['ratio_to_step']:.2f}x the step's {steps:.0f}); RSS {r['total_rss_mb']:.0f} MB, "
                    f"PSS {r['total_pss_mb']:.0f} MB; start-up {r['startup_s']:.1f} s",
                    flush=True,
                )
    return {
        "command": "python -m benchmarks.pipeline " + " ".join(f"--{k}={v}" for k, v in vars(args).items()),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "machine": {
            "cpu_cores": os.cpu_count(),
            "arch": platform.machine(),
            "backend": jax.default_backend(),
            "devices": [d.device_kind for d in jax.local_devices()],
            "memory_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1),
            "load_average_at_end": os.getloadavg(),
        },
        "batch_size": BATCH_SIZE,
        "model_size": args.size,
        "peak_rss_self_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "rows": rows,
        "host_target": per_host(rows, args.target),
    }


def per_host(rows, target: float) -> dict:
    """From the 1-worker rates: the cores a host needs for ``target`` molecules/s (one per worker,
    plus two for the training process), per objective and layout."""
    out = {"target_molecules_per_s": target}
    for r in rows:
        if r["workers"] == 1:
            out[f"{r['objective']}/{r['layout']}"] = {
                "per_worker_molecules_per_s": r["molecules_per_s"],
                "workers_needed": int(np.ceil(target / r["molecules_per_s"])),
                "cores_needed": int(np.ceil(target / r["molecules_per_s"])) + 2,
            }
    return out


def markdown(res: dict) -> str:
    m = res["machine"]
    lines = [
        f"# Batch preparation against the training step ({res['date']})",
        "",
        f"Machine: {m['cpu_cores']} CPU cores ({m['arch']}), {m['memory_gb']} GB, JAX backend "
        f"{m['backend']} ({', '.join(sorted(set(m['devices'])))}); load average at the end "
        f"{', '.join(f'{x:.1f}' for x in m['load_average_at_end'])}. Batch {res['batch_size']}, "
        f"model size {res['model_size']}, real QM9 molecules.",
        "",
        f"Command: `{res['command']}`",
        "",
        "| objective | layout | workers | batches (molecules/s) | step (molecules/s) | ratio | "
        "RSS all processes (MB) | PSS all processes (MB) | worker start-up (s) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in res["rows"]:
        lines.append(
            f"| {r['objective']} | {r['layout']} | {r['workers']} | {r['molecules_per_s']:.0f} | "
            f"{r['step_molecules_per_s']:.0f} | {r['ratio_to_step']:.2f} | {r['total_rss_mb']:.0f} | "
            f"{r['total_pss_mb']:.0f} | {r['startup_s']:.1f} |"
        )
    t = res["host_target"]
    lines += [
        "",
        f"Cores a host needs for {t['target_molecules_per_s']:.0f} molecules/s (1-worker rate):",
        "",
    ]
    for key, v in t.items():
        if isinstance(v, dict):
            lines.append(
                f"- {key}: {v['per_worker_molecules_per_s']:.0f} molecules/s per worker: "
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
