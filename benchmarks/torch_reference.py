"""The PyTorch reference of benchmarks/throughput/: torchmd-net 3.1.0's equivariant transformer.

Runs inside benchmarks/.torch_venv (made by benchmarks/setup_torch_env.sh), never in the JAX env.
It is a small worker driven over stdin/stdout with one JSON object per line, so that the JAX
process can interleave its own timed blocks with this one's on the same (noisy) machine:

  {"cmd": "setup", "npz": path, "objective": "coord"|"georecon", "num_layers": 4, "features": 128,
   "num_heads": 8, "num_rbf": 32, "trainable_rbf": false, "cutoff": 5.0, "decoder_num_rbf": 32,
   "decoder_num_layers": 1, "code_dim": 128, "learning_rate": 4e-4, "seed": 0,
   "device": "cpu"|"cuda", "matmul_precision": "highest"|"high"}
  {"cmd": "run", "batches": [0, 1, ...]}     -> {"times": [seconds per step]}
  {"cmd": "rss"}                             -> {"peak_rss_mb": ...}
  {"cmd": "quit"}

The .npz holds the batches the JAX side trains on (same molecules, same order): ``z``, ``pos``
(concatenated over all batches), ``batch`` (molecule index within its batch), ``node_offsets``
[num_batches + 1].

Steps (forward + backward + AdamW, like the JAX side):
  coord:    x, vec = TorchMD_ET(z, pos + 0.04 ε); ε̂ = EquivariantVectorOutput(x, vec); L2(ε̂, ε).
  georecon: the clean and the noisy molecule both go through TorchMD_ET; a graph code from the
            mean-pooled clean scalars and an embedding of σ are fused into the noisy scalars; one
            more EquivariantMultiHeadAttention layer (own radial basis) and a vector head predict ε;
            auxiliary node head on the noisy and clean features (as georecon_jax's objective).
"""

from __future__ import annotations

import json
import math
import os
import resource
import sys
import time

# The protocol owns the original stdout; anything else printed (library banners) goes to stderr.
_PROTOCOL = os.fdopen(os.dup(1), "w")
os.dup2(2, 1)

import numpy as np  # noqa: E402
import torch  # noqa: E402
from torch import nn  # noqa: E402

from torchmdnet.models.output_modules import EquivariantVectorOutput
from torchmdnet.models.torchmd_et import EquivariantMultiHeadAttention, TorchMD_ET
from torchmdnet.models.utils import ExpNormalSmearing, OptimizedDistance, act_class_mapping


def scatter_mean(x, batch, num):
    total = torch.zeros(num, x.shape[1], dtype=x.dtype, device=x.device).index_add_(0, batch, x)
    count = torch.zeros(num, dtype=x.dtype, device=x.device).index_add_(
        0, batch, torch.ones_like(batch, dtype=x.dtype)
    )
    return total / count.clamp(min=1)[:, None]


class GeoReconLike(nn.Module):
    """Encoder + graph code + σ embedding + 1 attention layer decoder + vector heads."""

    def __init__(self, cfg):
        super().__init__()
        F = cfg["features"]
        self.encoder = TorchMD_ET(
            hidden_channels=F,
            num_layers=cfg["num_layers"],
            num_rbf=cfg["num_rbf"],
            num_heads=cfg["num_heads"],
            cutoff_upper=cfg["cutoff"],
            trainable_rbf=cfg["trainable_rbf"],
            max_num_neighbors=32,
        )
        self.node_head = EquivariantVectorOutput(F)
        self.graph_code = nn.Linear(F, cfg["code_dim"])
        self.sigma_mlp = nn.Sequential(nn.Linear(32, F), nn.SiLU(), nn.Linear(F, F))
        self.fuse = nn.Sequential(nn.Linear(2 * F + cfg["code_dim"], F), nn.SiLU(), nn.Linear(F, F))
        self.distance = OptimizedDistance(
            0.0, cfg["cutoff"], max_num_pairs=-32, return_vecs=True, loop=True, long_edge_index=True
        )
        self.rbf = ExpNormalSmearing(0.0, cfg["cutoff"], cfg["decoder_num_rbf"], True)
        self.norms = nn.ModuleList([nn.LayerNorm(F) for _ in range(cfg["decoder_num_layers"])])
        self.layers = nn.ModuleList(
            [
                EquivariantMultiHeadAttention(
                    F,
                    cfg["decoder_num_rbf"],
                    "both",
                    cfg["num_heads"],
                    act_class_mapping["silu"],
                    "silu",
                    0.0,
                    cfg["cutoff"],
                )
                for _ in range(cfg["decoder_num_layers"])
            ]
        )
        self.out = EquivariantVectorOutput(F)
        self.register_buffer("freqs", torch.exp(torch.linspace(0.0, math.log(100.0), 16)), persistent=False)

    def forward(self, z, pos, batch, num_mol, sigma, eps):
        noisy = pos + sigma[batch][:, None] * eps
        x_n, vec_n, *_ = self.encoder(z, noisy, batch)
        node_pred = self.node_head.pre_reduce(x_n, vec_n, z, noisy, batch)
        x_c, vec_c, *_ = self.encoder(z, pos, batch)
        code = self.graph_code(scatter_mean(x_c, batch, num_mol))[batch]
        ang = torch.log(sigma)[batch][:, None] * self.freqs[None]
        s_emb = self.sigma_mlp(torch.cat([torch.sin(ang), torch.cos(ang)], -1))
        x = x_n + self.fuse(torch.cat([x_n, code, s_emb], -1))
        vec = vec_n
        edge_index, edge_weight, edge_vec = self.distance(noisy, batch)
        mask = edge_index[0] != edge_index[1]
        edge_vec[mask] = edge_vec[mask] / torch.norm(edge_vec[mask], dim=1).unsqueeze(1)
        edge_attr = self.rbf(edge_weight)
        for norm, layer in zip(self.norms, self.layers):
            dx, dvec = layer(norm(x), vec, edge_index, edge_weight, edge_attr, edge_vec)
            x, vec = x + dx, vec + dvec
        pred = self.out.pre_reduce(x, vec, z, noisy, batch)
        clean_pred = self.node_head.pre_reduce(x_c, vec_c, z, pos, batch)
        recon = ((pred - eps) ** 2).mean()
        return recon + 0.1 * ((node_pred - eps) ** 2).mean() + 0.1 * (clean_pred**2).mean()


class CoordLike(nn.Module):
    """Coord: TorchMD_ET + EquivariantVectorOutput noise head on the perturbed structure."""

    def __init__(self, cfg):
        super().__init__()
        self.encoder = TorchMD_ET(
            hidden_channels=cfg["features"],
            num_layers=cfg["num_layers"],
            num_rbf=cfg["num_rbf"],
            num_heads=cfg["num_heads"],
            cutoff_upper=cfg["cutoff"],
            trainable_rbf=cfg["trainable_rbf"],
            max_num_neighbors=32,
        )
        self.head = EquivariantVectorOutput(cfg["features"])

    def forward(self, z, pos, batch, num_mol, sigma, eps):
        noisy = pos + sigma[batch][:, None] * eps
        x, vec, *_ = self.encoder(z, noisy, batch)
        return ((self.head.pre_reduce(x, vec, z, noisy, batch) - eps) ** 2).mean()


class Worker:
    def __init__(self):
        self.model = None

    def setup(self, cfg):
        torch.manual_seed(cfg.get("seed", 0))
        self.device = torch.device(cfg.get("device", "cpu"))
        # "highest": true float32 products (torch's default); "high": TF32 tensor cores on GPUs.
        torch.set_float32_matmul_precision(cfg.get("matmul_precision", "highest"))
        data = np.load(cfg["npz"])
        off = data["node_offsets"]
        self.batches = []
        for k in range(len(off) - 1):
            a, b = int(off[k]), int(off[k + 1])
            batch = torch.from_numpy(data["batch"][a:b].astype(np.int64))
            self.batches.append(
                (
                    torch.from_numpy(data["z"][a:b].astype(np.int64)).to(self.device),
                    torch.from_numpy(data["pos"][a:b].astype(np.float32)).to(self.device),
                    batch.to(self.device),
                    int(batch.max()) + 1,
                )
            )
        self.objective = cfg["objective"]
        self.model = (GeoReconLike if self.objective == "georecon" else CoordLike)(cfg).to(self.device)
        self.opt = torch.optim.AdamW(
            self.model.parameters(), lr=cfg.get("learning_rate", 4e-4), weight_decay=0.0
        )
        self.gen = torch.Generator(device=self.device).manual_seed(cfg.get("seed", 0))
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        return {
            "num_params": int(sum(p.numel() for p in self.model.parameters())),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "device": (torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else "cpu"),
            "matmul_precision": torch.get_float32_matmul_precision(),
        }

    def step(self, k):
        z, pos, batch, num_mol = self.batches[k % len(self.batches)]
        eps = torch.randn(pos.shape, generator=self.gen, device=self.device)
        if self.objective == "georecon":
            u = torch.rand(num_mol, generator=self.gen, device=self.device)
            sigma = torch.exp(math.log(0.01) + u * (math.log(2.0) - math.log(0.01)))
        else:
            sigma = torch.full((num_mol,), 0.04, device=self.device)
        loss = self.model(z, pos, batch, num_mol, sigma, eps)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 10.0)
        self.opt.step()
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)  # the step's kernels, the optimizer's included
        return float(loss.detach())

    def run(self, batches):
        times = []
        for k in batches:
            t = time.perf_counter()
            self.step(k)
            times.append(time.perf_counter() - t)
        return {"times": times}


def main():
    import warnings

    warnings.filterwarnings("ignore")
    torch.set_num_threads(int(os.environ.get("TORCH_NUM_THREADS", os.cpu_count() or 1)))
    worker = Worker()
    out = _PROTOCOL
    sys.stdout = sys.stderr
    for line in sys.stdin:
        msg = json.loads(line)
        cmd = msg.pop("cmd")
        try:
            if cmd == "setup":
                reply = worker.setup(msg)
            elif cmd == "run":
                reply = worker.run(msg["batches"])
            elif cmd == "rss":
                reply = {"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
                if worker.model is not None and worker.device.type == "cuda":
                    reply["peak_device_mb"] = torch.cuda.max_memory_allocated(worker.device) / 2**20
            elif cmd == "quit":
                break
            else:
                reply = {"error": f"unknown command {cmd}"}
        except Exception as e:  # report, keep serving
            import traceback

            reply = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")
        out.flush()


if __name__ == "__main__":
    main()
