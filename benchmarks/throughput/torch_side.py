"""The torchmd-net side: benchmarks/torch_reference.py in the torch environment, driven by JSON
lines, and the batches it is given (the JAX side's molecules, in the same order)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np

from benchmarks.throughput.settings import BENCHMARKS, ROOT, SIZES, TORCH_PRECISION


def torch_python() -> Path:
    """The Python that runs torch_reference.py: $GEORECON_TORCH_PYTHON (a path or a command on the
    PATH), else the benchmark's own environment benchmarks/.torch_venv."""
    name = os.environ.get("GEORECON_TORCH_PYTHON")
    return Path(shutil.which(name) or name) if name else BENCHMARKS / ".torch_venv" / "bin" / "python"


TORCH_PYTHON = torch_python()


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
            [str(TORCH_PYTHON), str(BENCHMARKS / "torch_reference.py")],
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


def describe_torch(worker, npz_path: Path, args) -> dict:
    """torch's version, threads, device and precision, from a tiny model set up on the batches."""
    info = worker.call(
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
    return {
        "torch": info["torch"],
        "torch_threads": info["threads"],
        "torch_device": info["device"],
        "torch_matmul_precision": info["matmul_precision"],
        "torchmd_net": "3.1.0",
        "torch_omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
    }


def set_up_model(worker, cfg, size: str, objective: str, npz_path: Path, args) -> dict:
    """torchmd-net's model of ``size`` and ``objective`` (as the JAX config ``cfg``) on the batches;
    returns its number of parameters and the seconds the set-up took."""
    t = time.perf_counter()
    info = worker.call(
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
    info["setup_seconds"] = time.perf_counter() - t
    return info
