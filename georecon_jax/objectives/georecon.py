"""GeoRecon (graph-level geometry reconstruction; Yan, Li, Zhang, arXiv 2506.13174).

As implemented here (choices the paper leaves open are marked *):
  1. The clean molecule goes through the encoder; its node scalars are mean-pooled over real
     atoms and mapped linearly to the graph code z (*pooling: masked mean).
  2. Per molecule, σ is drawn log-uniformly in [σ_min, σ_max] (*schedule; 'fixed' is one setting)
     and every atom is displaced by σ·ε, ε ~ N(0, I).
  3. The perturbed molecule goes through the same encoder; the decoder fuses z and an embedding
     of σ into the perturbed node features and predicts ε̂ per atom (an equivariant vector).
  4. Loss: mean over atoms and axes of (ε̂ - ε)². Predicting the unit-variance ε is denoising score
     matching with the usual weight λ(σ) = σ² (the score is -ε/σ), so every σ level contributes
     on the same scale.
  5. Auxiliary heads (*weights): node-level denoising of the perturbed features without z
     (``node_denoise_weight``), and a clean head (``clean_weight``): the same node head on the
     clean features must predict zero noise.

Report: coordinates rebuilt from z alone (`make_reconstruct_fn`), scored by Kabsch RMSD (Å), and
the z diagnostic (`graph_code_diagnostic`): does the decoder do better with the molecule's own code
than with another molecule's or a zero code, by σ, and does reconstruction from z?
"""

from __future__ import annotations

import logging
import time
from typing import Dict, Iterable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from georecon_jax.models.et import Dense
from georecon_jax.models.graph import graph_masks, masked_mean
from georecon_jax.models.heads import VectorHead
from georecon_jax.models.pretrain import GeometryDecoder
from georecon_jax.objectives.coord import check_sigmas, squared_error
from georecon_jax.objectives.graph_code_diagnostic import (
    DEFAULT_SIGMAS,
    aggregate_decoder_errors,
    decoder_errors,
    same_size_partners,
)
from georecon_jax.objectives.noise import (
    NoiseNormaliser,
    per_atom_normal,
    perturb,
    rms_noise_scale,
    sample_noise_scale,
    sigma_ladder,
)
from georecon_jax.objectives.registry import Objective, register

log = logging.getLogger(__name__)


class GeoReconOutputs(NamedTuple):
    eps: jax.Array  # [n, 3] the noise drawn
    sigma: jax.Array  # [n_graph] Å
    recon_eps: jax.Array  # [n, 3] the decoder's ε̂, guided by z
    node_eps: jax.Array  # [n, 3] the node head's ε̂ from the perturbed structure, without z
    clean_eps: jax.Array  # [n, 3] the node head on the clean structure (target 0)


def graph_code(model, graph, clean):
    """z [n_graph, code_dim]: the masked mean of the clean node scalars, mapped linearly."""
    return model.heads["graph_code"](masked_mean(clean.scalars, graph_masks(graph)))


def decode(model, graph, positions, code, log_sigma_per_node):
    """ε̂ [n, 3] at ``positions`` (the perturbed structure), guided by z [n_graph, C]."""
    noisy = model.encode(graph, positions)
    return model.heads["decoder"](
        noisy, code[graph_masks(graph).node_graph], log_sigma_per_node, graph, positions
    ), noisy


@register
class GeoRecon(Objective):
    name = "georecon"
    curves = {
        "loss (dimensionless, ε-MSE)": (("train", "loss", "train"), ("validation", "loss", "validation")),
        "GeoRecon terms (train)": tuple(
            ("train", k, k) for k in ("recon_mse", "node_denoise_mse", "clean_mse")
        ),
    }

    def validate(self):
        problems = check_sigmas(self.cfg)
        dec, enc = self.config.model.get("decoder"), self.config.model.encoder
        if dec is None:
            problems.append("objective.name='georecon' needs model.decoder (coord.py sets it to None)")
        elif enc.features % dec.num_heads:
            problems.append(
                f"model.decoder.num_heads={dec.num_heads} does not divide "
                f"model.encoder.features={enc.features}"
            )
        return problems

    def heads(self):
        enc, dec = self.config.model.encoder, self.config.model.decoder
        return {
            "node_noise": VectorHead(enc.features),
            "graph_code": Dense(dec.code_dim),
            "decoder": GeometryDecoder(enc.features, dec.num_layers, dec.num_heads, dec.num_rbf, enc.cutoff),
        }

    def noise_normaliser(self):
        # The node-noise head is trained on ε at each molecule's σ; the normaliser an accumulated
        # statistic of its raw displacements would reach is the rms σ of the schedule.
        def draw(key, graph_ids):
            return sample_noise_scale(
                key, graph_ids, self.cfg.sigma_min, self.cfg.sigma_max, self.cfg.schedule
            )

        sigma = rms_noise_scale(draw)
        return NoiseNormaliser.of_sigma(sigma, f"objective {self.name}: rms of the σ it draws, Å")

    def forward(self, model, graph, key):
        m = graph_masks(graph)
        sigma = sample_noise_scale(
            key, graph.globals.graph_id, self.cfg.sigma_min, self.cfg.sigma_max, self.cfg.schedule
        )
        noisy_pos, eps = perturb(graph, key, sigma)
        clean = model.encode(graph)
        z = graph_code(model, graph, clean)
        recon, noisy = decode(model, graph, noisy_pos, z, jnp.log(sigma)[m.node_graph])
        node_head = model.heads["node_noise"]
        return GeoReconOutputs(eps, sigma, recon, node_head(*noisy), node_head(*clean))

    def loss(self, out: GeoReconOutputs, graph):
        m = graph_masks(graph)
        recon = masked_mean(squared_error(out.recon_eps, out.eps), m)
        node = masked_mean(squared_error(out.node_eps, out.eps), m)
        clean = masked_mean((out.clean_eps**2).mean(axis=-1), m)
        total = recon + self.cfg.node_denoise_weight * node + self.cfg.clean_weight * clean
        return total, {"recon_mse": recon, "node_denoise_mse": node, "clean_mse": clean, "sigma": out.sigma}

    def report(self, model, params, graphs: Iterable) -> Dict:
        """Kabsch RMSD (Å) of coordinates rebuilt from the graph code alone, against pure noise, and
        the z diagnostic (``z_diagnostic``: see `graph_code_diagnostic`)."""
        if not self.cfg.get("num_recon_molecules"):
            return {}
        t0 = time.perf_counter()
        graphs = [jax.device_get(g) for g in graphs]
        require_all_pairs(graphs)
        key = jax.random.PRNGKey(self.config.seed + 17)
        code_fn = jax.jit(make_code_fn(model))
        recon = jax.jit(
            make_reconstruct_from_code_fn(
                model, self.cfg.sigma_min, self.cfg.sigma_max, self.cfg.num_sampling_steps
            )
        )
        codes = [np.asarray(code_fn(params, g)) for g in graphs]
        own = [np.asarray(recon(params, g, c, key)) for g, c in zip(graphs, codes)]
        rmsds, noise_rmsds = [], []
        for k, (graph, pred) in enumerate(zip(graphs, own)):
            rng = np.random.default_rng(k)
            for ref, rebuilt in split_molecules(graph, pred):
                rmsds.append(kabsch_rmsd(rebuilt, ref))
                noise_rmsds.append(kabsch_rmsd(rng.normal(size=ref.shape) * self.cfg.sigma_max, ref))
        out = {
            "reconstruction_rmsd_angstrom": float(np.mean(rmsds)),
            "reconstruction_rmsd_median_angstrom": float(np.median(rmsds)),
            "pure_noise_rmsd_angstrom": float(np.mean(noise_rmsds)),
            "num_molecules": len(rmsds),
            "num_sampling_steps": self.cfg.num_sampling_steps,
        }
        t1 = time.perf_counter()
        diag = {}
        sigmas = tuple(self.cfg.get("diagnostic_sigmas", DEFAULT_SIGMAS) or ())
        if sigmas:
            errors = jax.jit(make_decoder_errors_fn(model, sigmas))
            dkey = jax.random.fold_in(key, 1)
            diag.update(aggregate_decoder_errors([errors(params, g, dkey) for g in graphs], sigmas))
        diag.update(reconstruction_with_other_codes(recon, params, graphs, codes, own, key))
        diag["pure_noise_rmsd"] = out["pure_noise_rmsd_angstrom"]
        out["z_diagnostic"] = diag
        log.info(
            "report: reconstruction %.1f s, z diagnostic %.1f s",
            t1 - t0,
            time.perf_counter() - t1,
        )
        return out


def require_all_pairs(graphs) -> None:
    """Refuses host graphs whose real molecules do not list all their atom pairs. Reconstruction
    starts from pure noise and the z diagnostic perturbs by up to 2 Å: on candidate pairs chosen at
    the clean positions (``graph.neighbor_list='radius'``) the sampler would be told which atoms
    are near each other in the structure it is to rebuild. (`tasks.pretrain` builds all-pairs
    graphs for the report.)"""
    for graph in graphs:
        real = np.asarray(graph.globals.graph_id) >= 0
        n = np.asarray(graph.n_node)[: len(real)][real].astype(np.int64)
        edges = np.asarray(graph.n_edge)[: len(real)][real]
        if np.any(edges != n * (n - 1) // 2):
            raise ValueError(
                "GeoRecon's reconstruction from pure noise and its z diagnostic need graphs with all "
                "atom pairs (graph.neighbor_list=all_pairs): these hold a radius list built from the "
                "clean positions, which would leak the geometry being rebuilt"
            )


def make_code_fn(model):
    """``code(params, graph) -> z [n_graph, C]`` of the clean molecules."""
    return lambda params, graph: model.apply(
        params, graph, method=lambda mdl, g: graph_code(mdl, g, mdl.encode(g))
    )


def make_decoder_errors_fn(model, sigmas):
    """``errors(params, graph, key)``: `graph_code_diagnostic.decoder_errors` of a GeoRecon model
    (jittable): the perturbed molecule is encoded once per σ and decoded with each code."""

    def decode_many(mdl, g, positions, codes, log_sigma):
        noisy = mdl.encode(g, positions)
        node_graph = graph_masks(g).node_graph
        return [mdl.heads["decoder"](noisy, c[node_graph], log_sigma, g, positions) for c in codes]

    code = make_code_fn(model)

    def errors(params, graph, key):
        return decoder_errors(
            lambda g: code(params, g),
            lambda g, pos, codes, ls: model.apply(params, g, pos, codes, ls, method=decode_many),
            graph,
            key,
            sigmas,
        )

    return errors


def reconstruction_with_other_codes(recon, params, graphs, codes, own, key) -> Dict:
    """Reconstruction from z alone with the molecule's own code (``own``, already rebuilt) against
    the code of another held-out molecule with the same atom count (the same composition when one
    exists): same graph, same start noise; Kabsch RMSD (Å) to the molecule's own structure, over
    the molecules that have such a partner."""
    slots = []  # (batch, graph slot, atomic numbers) of each real molecule
    for b, graph in enumerate(graphs):
        start = np.cumsum(np.concatenate([[0], np.asarray(graph.n_node)]))
        z = np.asarray(graph.nodes.atomic_numbers)
        for gi, mol in enumerate(np.asarray(graph.globals.graph_id)):
            if mol >= 0:
                slots.append((b, gi, z[start[gi] : start[gi + 1]]))
    partner, same_comp = same_size_partners([s[2] for s in slots])
    other_codes = [c.copy() for c in codes]
    for (b, gi, _), p in zip(slots, partner):
        if p >= 0:
            pb, pg, _ = slots[p]
            other_codes[b][gi] = codes[pb][pg]
    rmsd_own, rmsd_other = [], []
    paired = {(b, gi) for (b, gi, _), p in zip(slots, partner) if p >= 0}
    for b, graph in enumerate(graphs):
        if not any(k[0] == b for k in paired):
            continue
        other = np.asarray(recon(params, graph, other_codes[b], key))
        start = np.cumsum(np.concatenate([[0], np.asarray(graph.n_node)]))
        pos = np.asarray(graph.nodes.positions)
        for gi in range(len(start) - 1):
            if (b, gi) in paired:
                a, e = start[gi], start[gi + 1]
                rmsd_own.append(kabsch_rmsd(own[b][a:e], pos[a:e]))
                rmsd_other.append(kabsch_rmsd(other[a:e], pos[a:e]))
    rmsd_own, rmsd_other = np.asarray(rmsd_own), np.asarray(rmsd_other)
    n = len(rmsd_own)
    return {
        "recon_rmsd_own": float(rmsd_own.mean()) if n else None,  # None: no same-size pair
        "recon_rmsd_other": float(rmsd_other.mean()) if n else None,
        "recon_own_closer_fraction": float(np.mean(rmsd_own < rmsd_other)) if n else None,
        "n_pairs_same_size": int(n),
        "n_pairs_same_composition": int(same_comp[partner >= 0].sum()),
        "n_molecules_recon": len(slots),
    }


def split_molecules(graph, per_atom: np.ndarray):
    """(reference positions, per_atom rows) of each real molecule of a host-side padded graph."""
    start = np.cumsum(np.concatenate([[0], np.asarray(graph.n_node)]))
    for gi, mol in enumerate(np.asarray(graph.globals.graph_id)):
        if mol >= 0:
            a, b = start[gi], start[gi + 1]
            yield np.asarray(graph.nodes.positions)[a:b], per_atom[a:b]


def make_reconstruct_fn(model, sigma_min: float, sigma_max: float, num_steps: int):
    """``reconstruct(params, graph, key) -> positions [n, 3]``: rebuild coordinates from z alone.

    Starts from pure noise σ_max·ε and walks the geometric σ ladder down to σ_min with the
    deterministic (DDIM, η = 0) update of a variance-exploding diffusion:
    x̂₀ = x - σ_k ε̂(x, σ_k, z);  x ← x̂₀ + σ_{k+1} ε̂.  Returns the last x̂₀.
    """
    from_code = make_reconstruct_from_code_fn(model, sigma_min, sigma_max, num_steps)
    code = make_code_fn(model)

    def reconstruct(params, graph, key):
        return from_code(params, graph, code(params, graph), key)

    return reconstruct


def make_reconstruct_from_code_fn(model, sigma_min: float, sigma_max: float, num_steps: int):
    """``reconstruct(params, graph, code, key) -> positions [n, 3]``: `make_reconstruct_fn` with the
    graph code z [n_graph, C] given (the z diagnostic rebuilds a molecule from another's code)."""
    sigmas = sigma_ladder(sigma_min, sigma_max, num_steps)

    def reconstruct(params, graph, code, key):
        m = graph_masks(graph)
        eps0 = per_atom_normal(key, graph.globals.graph_id[m.node_graph], graph.nodes.atom_index)
        x = jnp.where(m.node_mask[:, None], sigmas[0] * eps0, 0.0)
        next_sigmas = jnp.concatenate([sigmas[1:], jnp.zeros(1)])

        def step(x, s):
            sigma, sigma_next = s
            log_sigma = jnp.full(x.shape[0], jnp.log(sigma))
            e, _ = model.apply(params, graph, x, code, log_sigma, method=decode)
            x0 = x - sigma * e
            x = jnp.where(m.node_mask[:, None], x0 + sigma_next * e, 0.0)
            return x, x0

        _, x0s = jax.lax.scan(step, x, (sigmas, next_sigmas))
        return x0s[-1]

    return reconstruct


def kabsch_rmsd(pred: np.ndarray, ref: np.ndarray) -> float:
    """RMSD (same unit as the inputs) after optimal rigid superposition (rotation + translation;
    reflections excluded)."""
    p = pred - pred.mean(0)
    q = ref - ref.mean(0)
    u, _, vt = np.linalg.svd(p.T @ q)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.sqrt(np.mean(np.sum((p @ rot - q) ** 2, axis=1))))
