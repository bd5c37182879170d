"""Makes tests/data/torchmd/: two small torchmd-net checkpoints and torch's own outputs on real QM9
molecules, for tests/test_import_torchmd.py (which runs without torch).

  python benchmarks/make_torchmd_fixture.py        (this repository's environment; needs
                                                   benchmarks/.torch_venv from setup_torch_env.sh)

Stage 1 (here) takes 4 QM9 molecules from qm9pack through georecon_jax.data.qm9; stage 2 runs the
same file in benchmarks/.torch_venv (``--torch-stage``) and writes:

  et3x.ckpt   torchmd-net 3.1.0's own model (``create_model``): ET 2 layers x 16 features, 2 heads,
              8 exp-normal RBF (fixed), EquivariantScalar output, an Atomref prior and mean/std
              standardisation, dataset QM9 energy_U0; saved as Lightning does ({"state_dict" with
              "model." keys, "hyper_parameters" as Lightning's AttributeDict, epoch, global_step}).
              Checked to load back through torchmd-net's own ``load_model``.
  pvd.ckpt    the layout of pre-training-via-denoising (torchmd-net 0.x): the same ET with
              trainable RBF plus the whitened EquivariantLayerNorm on the final vectors
              (``representation_model.out_norm_vec.weight``), the noise head ``output_model_noise``
              (EquivariantVectorOutput), ``pos_normalizer`` buffers, ``update_net.<k>`` keys and
              pvd's hyper-parameters (layernorm_on_vec='whitened', output_model_noise='VectorOutput',
              dataset QM9 homo). torchmd-net 3.x cannot express the vector norm, so its forward here
              is torchmd-net 3.x's ET followed by a torch implementation of the reference's formula
              (float64 SVD, covariance + 1e-5·diag(1, 2, 3), (s + 1e-5)^(-1/2)).
  et3x_vector_cutoff.ckpt  torchmd-net 3.1.0's own model as et3x.ckpt but with ``vector_cutoff=True``
              (the cutoff weighs the values instead of the attention, ET-MD17.yaml's setting) and
              a trainable RBF; its own seed, so the two files above do not change with it.
  reference.npz  the molecules (z, pos, n_atoms) and torch's outputs in float32 and float64:
              energies and forces (-dE/dR) of the three models, the pvd model's noise head, and
              its normaliser.

Every parameter is perturbed from torch's initialisation (biases, LayerNorm scales and the
Atomref are not left at 0/1), so that a wrong transpose or a dropped bias shows.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
OUT = os.path.join(ROOT, "tests", "data", "torchmd")
TORCH_PYTHON = os.path.join(HERE, ".torch_venv", "bin", "python")

SIZE = dict(embedding_dimension=16, num_layers=2, num_heads=2, num_rbf=8, cutoff_upper=5.0, max_z=100)


def pick_molecules():
    """4 QM9 molecules of 9-27 atoms with H, C, N, O and F among them, some pairs beyond 5 Å."""
    sys.path.insert(0, ROOT)
    from georecon_jax.data.qm9 import load_qm9

    mols, _ = load_qm9(limit=2000, verbose=False)
    n = mols.n_atoms
    zs = [mols.atomic_numbers[mols.offsets[i] : mols.offsets[i] + n[i]] for i in range(len(n))]
    chosen = [
        int(np.argmax(n)),  # the largest
        next(i for i in range(len(n)) if 9 in zs[i] and n[i] >= 9),  # with fluorine
        next(i for i in range(len(n)) if 7 in zs[i] and 8 in zs[i] and n[i] >= 12),  # N and O
        next(i for i in range(len(n)) if n[i] == 9),  # a small one
    ]
    z = np.concatenate([zs[i] for i in chosen]).astype(np.int64)
    pos = np.concatenate([mols.positions[mols.offsets[i] : mols.offsets[i] + n[i]] for i in chosen])
    return np.asarray(chosen), z, pos.astype(np.float32), n[chosen].astype(np.int64)


def main():
    if not os.path.exists(TORCH_PYTHON):
        sys.exit(f"{TORCH_PYTHON} is missing: run bash benchmarks/setup_torch_env.sh first")
    ids, z, pos, n_atoms = pick_molecules()
    os.makedirs(OUT, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        inputs = os.path.join(tmp, "inputs.npz")
        np.savez(inputs, qm9_index=ids, z=z, pos=pos, n_atoms=n_atoms)
        subprocess.run([TORCH_PYTHON, os.path.abspath(__file__), "--torch-stage", inputs, OUT], check=True)
    sizes = {f: os.path.getsize(os.path.join(OUT, f)) for f in sorted(os.listdir(OUT))}
    print("wrote", OUT, sizes, f"total {sum(sizes.values()) / 1024:.1f} KiB")


# ---------------------------------------------------------------------------------------------
# Stage 2: inside benchmarks/.torch_venv.


def torch_stage(inputs: str, out: str):
    import torch
    from lightning.fabric.utilities.data import AttributeDict
    from torchmdnet.models.model import create_model, create_prior_models, load_model
    from torchmdnet.models.output_modules import EquivariantVectorOutput

    torch.manual_seed(0)
    d = np.load(inputs)
    z = torch.from_numpy(d["z"])
    pos0 = torch.from_numpy(d["pos"])
    batch = torch.repeat_interleave(torch.arange(len(d["n_atoms"])), torch.from_numpy(d["n_atoms"]))

    def perturb(module, skip=()):
        with torch.no_grad():
            for name, p in module.named_parameters():
                if not any(s in name for s in skip):
                    p.add_(0.1 * torch.randn_like(p))

    base = dict(
        model="equivariant-transformer",
        **SIZE,
        rbf_type="expnorm",
        activation="silu",
        attn_activation="silu",
        neighbor_embedding=True,
        distance_influence="both",
        cutoff_lower=0.0,
        max_num_neighbors=32,
        reduce_op="sum",
        output_model="Scalar",
        derivative=True,
        atom_filter=-1,
        precision=32,
        dataset="QM9",
        standardize=True,
    )

    # --- torchmd-net 3.x, its own model ---------------------------------------------------------
    hp3 = dict(
        base, trainable_rbf=False, dataset_arg="energy_U0", prior_model="Atomref", prior_args={"max_z": 100}
    )
    hp3.update(vector_cutoff=False, box_vecs=None, charge=False, spin=False, seed=0, lr=4e-4, batch_size=32)
    priors = create_prior_models(hp3)
    with torch.no_grad():
        priors[0].atomref.weight.copy_(0.5 * torch.randn(100, 1))
        priors[0].initial_atomref.copy_(priors[0].atomref.weight)
    model3 = create_model(hp3, prior_model=priors, mean=torch.tensor(0.7), std=torch.tensor(1.9))
    perturb(model3, skip=("prior_model",))
    model3.eval()
    ckpt3 = os.path.join(out, "et3x.ckpt")
    torch.save(
        {
            "epoch": 3,
            "global_step": 1234,
            "pytorch-lightning_version": "2.6.6",
            "state_dict": {f"model.{k}": v for k, v in model3.state_dict().items()},
            "hyper_parameters": AttributeDict(hp3),
        },
        ckpt3,
    )
    y3, f3 = model3(z, pos0.clone(), batch)
    reloaded = load_model(ckpt3, derivative=True)
    y3b, f3b = reloaded(z, pos0.clone(), batch)
    assert torch.allclose(y3, y3b, atol=1e-5) and torch.allclose(f3, f3b, atol=1e-5), "it does not load back"

    # --- pre-training-via-denoising's layout ----------------------------------------------------
    hpp = dict(base, trainable_rbf=True, dataset_arg="homo", prior_model=None, aggr="add", ngpus=-1)
    hpp.update(
        reduce_op="add",
        layernorm_on_vec="whitened",
        output_model_noise="VectorOutput",
        position_noise_scale=0.005,
        denoising_weight=0.1,
        pretrained_model=None,
        load_model=None,
    )
    ptorch = create_model(
        dict(base, trainable_rbf=True, prior_model=None), mean=torch.tensor(-6.5), std=torch.tensor(0.6)
    )
    rep, head = ptorch.representation_model, ptorch.output_model
    rep.out_norm_vec = WhitenedVecNorm(SIZE["embedding_dimension"])
    noise_head = EquivariantVectorOutput(SIZE["embedding_dimension"])
    perturb(ptorch)
    perturb(noise_head)
    with torch.no_grad():
        rep.distance_expansion.means.copy_(rep.distance_expansion.means * (1 + 0.05 * torch.randn(8)))
        rep.out_norm_vec.weight.copy_(1 + 0.2 * torch.randn(SIZE["embedding_dimension"]))
    ptorch.eval()
    noise = 0.005 * torch.randn(5000, 3) + torch.tensor([1e-4, -2e-4, 0.0])
    state = {}
    for k, v in ptorch.state_dict().items():
        if k == "representation_model.distance.box":
            continue  # torchmd-net 0.x has no such buffer
        state[k.replace(".update_net.layers.", ".update_net.")] = v
    for k, v in noise_head.state_dict().items():
        state["output_model_noise." + k.replace(".update_net.layers.", ".update_net.")] = v
    state.update(
        {
            "pos_normalizer.acc_sum": noise.sum(0),
            "pos_normalizer.acc_squared_sum": (noise**2).sum(0),
            "pos_normalizer.acc_count": torch.tensor([5000.0]),
            "pos_normalizer.num_accumulations": torch.tensor([50.0]),
        }
    )
    torch.save(
        {
            "epoch": 0,
            "global_step": 77,
            "state_dict": {f"model.{k}": v for k, v in state.items()},
            "hyper_parameters": hpp,
        },
        os.path.join(out, "pvd.ckpt"),
    )

    def pvd_forward(dtype):
        for m in (ptorch, noise_head):
            m.to(dtype)
        pos = pos0.clone().to(dtype).requires_grad_(True)
        x, vec, *_ = rep(z, pos, batch)
        vec = rep.out_norm_vec(vec)
        eps_hat = noise_head.pre_reduce(x, vec, z, pos, batch)
        per_atom = head.pre_reduce(x, vec, z, pos, batch) * ptorch.std
        y = torch.zeros(len(d["n_atoms"]), 1, dtype=dtype).index_add(0, batch, per_atom) + ptorch.mean
        (g,) = torch.autograd.grad(y.sum(), pos)
        return y.detach()[:, 0], -g, eps_hat.detach()

    def et3x_forward(dtype):
        model3.to(dtype)
        y, f = model3(z, pos0.clone().to(dtype), batch)
        return y.detach()[:, 0], f.detach()

    yp, fp, eps_hat = pvd_forward(torch.float32)
    yp64, fp64, eps_hat64 = pvd_forward(torch.float64)
    y3_64, f3_64 = et3x_forward(torch.float64)

    # --- torchmd-net 3.x with vector_cutoff (issue 35) ------------------------------------------
    torch.manual_seed(1)
    hpv = dict(hp3, trainable_rbf=True, vector_cutoff=True)
    priors_v = create_prior_models(hpv)
    with torch.no_grad():
        priors_v[0].atomref.weight.copy_(0.5 * torch.randn(100, 1))
        priors_v[0].initial_atomref.copy_(priors_v[0].atomref.weight)
    model_v = create_model(hpv, prior_model=priors_v, mean=torch.tensor(-0.3), std=torch.tensor(1.4))
    assert all(layer.vector_cutoff for layer in model_v.representation_model.attention_layers)
    perturb(model_v, skip=("prior_model",))
    model_v.eval()
    ckpt_v = os.path.join(out, "et3x_vector_cutoff.ckpt")
    torch.save(
        {
            "epoch": 1,
            "global_step": 321,
            "pytorch-lightning_version": "2.6.6",
            "state_dict": {f"model.{k}": v for k, v in model_v.state_dict().items()},
            "hyper_parameters": AttributeDict(hpv),
        },
        ckpt_v,
    )

    def vc_forward(dtype):
        model_v.to(dtype)
        y, f = model_v(z, pos0.clone().to(dtype), batch)
        return y.detach()[:, 0], f.detach()

    yv, fv = vc_forward(torch.float32)
    yv_64, fv_64 = vc_forward(torch.float64)
    reloaded = load_model(ckpt_v, derivative=True)
    yvb = reloaded(z, pos0.clone(), batch)[0].detach()[:, 0]
    assert torch.allclose(yv, yvb, rtol=1e-5, atol=1e-5), ("it does not load back", yv, yvb)

    count = 5000.0
    nmean = noise.sum(0) / count
    nstd = torch.sqrt((noise**2).sum(0) / count - nmean**2)

    np.savez(
        os.path.join(out, "reference.npz"),
        qm9_index=d["qm9_index"],
        z=d["z"],
        pos=d["pos"],
        n_atoms=d["n_atoms"],
        et3x_energy=y3.detach().numpy()[:, 0].astype(np.float32),
        et3x_forces=f3.detach().numpy().astype(np.float32),
        et3x_energy_f64=y3_64.numpy(),
        et3x_forces_f64=f3_64.numpy(),
        pvd_energy=yp.numpy().astype(np.float32),
        pvd_forces=fp.numpy().astype(np.float32),
        pvd_noise=eps_hat.numpy().astype(np.float32),
        pvd_energy_f64=yp64.numpy(),
        pvd_forces_f64=fp64.numpy(),
        pvd_noise_f64=eps_hat64.numpy(),
        et3x_vc_energy=yv.numpy().astype(np.float32),
        et3x_vc_forces=fv.numpy().astype(np.float32),
        et3x_vc_energy_f64=yv_64.numpy(),
        et3x_vc_forces_f64=fv_64.numpy(),
        pvd_noise_mean=nmean.numpy().astype(np.float32),
        pvd_noise_std=nstd.numpy().astype(np.float32),
    )


def _whitened_vec_norm_class():
    import torch
    from torch import nn

    class WhitenedVecNorm(nn.Module):
        """The reference's whitening norm of vectors [n, 3, F], written from its formula: centre
        over F, C = X Xᵀ / F + 1e-5·diag(1, 2, 3), out = V (s + 1e-5)^(-1/2) Vᵀ X · weight with
        C = U S Vᵀ by float64 SVD (singular values below s_max·3·eps64 dropped, as the reference)."""

        def __init__(self, features: int):
            super().__init__()
            self.features = features
            self.weight = nn.Parameter(torch.ones(features))

        def forward(self, vec):
            x = vec.double()
            x = x - x.mean(-1, keepdim=True)
            cov = x @ x.transpose(-1, -2) / self.features
            cov = cov + 1e-5 * torch.diag(torch.tensor([1.0, 2.0, 3.0], dtype=x.dtype))
            _, s, v = torch.linalg.svd(cov)
            v = v.transpose(-1, -2)  # torch.linalg.svd gives Vᴴ
            keep = s > s.max(-1, keepdim=True).values * 3 * torch.finfo(s.dtype).eps
            inv = torch.where(keep, 1.0 / torch.sqrt(s + 1e-5), torch.zeros_like(s))
            root = (v * inv.unsqueeze(-2)) @ v.transpose(-1, -2)
            return (root @ x).to(self.weight.dtype) * self.weight

    return WhitenedVecNorm


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--torch-stage":
        WhitenedVecNorm = _whitened_vec_norm_class()
        torch_stage(sys.argv[2], sys.argv[3])
    else:
        parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
        parser.parse_args()
        main()
