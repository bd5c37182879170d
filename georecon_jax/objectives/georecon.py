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

Variants (issue 20: the decoder above learns to ignore z; README "Does the decoder use z?"). The
caption-faithful objective is the default; each variant is one config field:
  * ``objective.parametrization``: ``eps`` (the decoder's output is ε̂) or ``edm`` (Karras et al.
    2022 preconditioning about each molecule's centroid c: the decoder sees c + c_in (x - c) with
    c_in = σ_d/√(σ²+σ_d²), so that a cloud of any σ reaches it at about the molecule's spread σ_d
    (``objective.sigma_data``, Å), and x̂₀ = c + c_skip (x - c) + c_out F with c_skip = σ_d²/(σ²+σ_d²),
    c_out = σσ_d/√(σ²+σ_d²): at σ ≫ σ_d the structure must come from F, i.e. from z).
  * ``objective.loss``: ``eps_mse`` (above), or a frame-free error of x̂₀ = x - σ ε̂ against the clean
    structure, weighted by 1/c_out² = (σ²+σ_d²)/(σσ_d)² (ε-MSE's scale at σ ≪ σ_d, x̂₀'s at σ ≫ σ_d):
    ``x0_distance`` (squared error of every interatomic distance of the molecule's pair list, Å²)
    or ``x0_kabsch`` (squared coordinate error after the optimal rotation, per axis, Å²) or
    ``x0_spectrum`` (squared error of the sorted pair distances: blind to which atom is which). A
    rotation-invariant z cannot tell the noise's frame at σ beyond the molecule's size; these
    losses do not ask it to.
  * ``model.decoder.input``: ``encoder`` (the shared encoder's features of the perturbed structure)
    or ``atoms`` (the decoder's own atom-type embedding: a bottleneck).
  * ``model.decoder.topology``: the decoder also gets the clean structure's bonds
    (`models.pretrain.TopologyEmbedding`), i.e. which atom is which, but no distances.

Report: coordinates rebuilt from z alone (`make_reconstruct_fn`), scored by Kabsch RMSD (Å), and
the z diagnostic (`graph_code_diagnostic`): does the decoder do better with the molecule's own code
than with another molecule's or a zero code, by σ, and does reconstruction from z?
"""

from __future__ import annotations

import dataclasses
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
    aggregate_decoder_errors,
    decoder_errors,
    distance_errors,
    spectrum_errors,
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
    recon_x0: jax.Array  # [n, 3] Å its x̂₀ = x - σ ε̂
    node_eps: jax.Array  # [n, 3] the node head's ε̂ from the perturbed structure, without z
    clean_eps: jax.Array  # [n, 3] the node head on the clean structure (target 0)


PARAMETRIZATIONS = ("eps", "edm")
LOSSES = ("eps_mse", "x0_distance", "x0_kabsch", "x0_spectrum")


def graph_code(model, graph, clean):
    """z [n_graph, code_dim]: the masked mean of the clean node scalars, mapped linearly."""
    return model.heads["graph_code"](masked_mean(clean.scalars, graph_masks(graph)))


@dataclasses.dataclass(frozen=True)
class Denoiser:
    """How the decoder's output becomes ε̂ and x̂₀ (``parametrization``, module docstring), and what
    it reads (``input``: the encoder's features of the perturbed structure, or atoms only)."""

    parametrization: str  # objective.parametrization
    sigma_data: float  # Å, objective.sigma_data
    input: str  # model.decoder.input

    @classmethod
    def of(cls, config):
        ob, dec = config.objective, config.model.decoder
        return cls(ob.parametrization, ob.sigma_data, dec.input)

    def inputs(self, mdl, graph, x, sigma_node, need_noisy: bool = False):
        """(positions the decoder sees [n, 3] Å, the encoder's features there or None, centroid
        per atom [n, 3])."""
        m = graph_masks(graph)
        center = masked_mean(x, m)[m.node_graph]
        if self.parametrization == "edm":
            c_in = self.sigma_data / jnp.sqrt(sigma_node**2 + self.sigma_data**2)
            x_in = center + c_in[:, None] * (x - center)
        else:
            x_in = x
        noisy = mdl.encode(graph, x_in) if (need_noisy or self.input == "encoder") else None
        return x_in, noisy, center

    def outputs(self, mdl, graph, x, sigma_node, code, x_in, noisy, center):
        """(ε̂ [n, 3], x̂₀ [n, 3] Å) with the graph code ``code`` [n_graph, C]."""
        m = graph_masks(graph)
        out = mdl.heads["decoder"](
            noisy if self.input == "encoder" else None,
            code[m.node_graph],
            jnp.log(sigma_node),
            graph,
            x_in,
        )
        s = sigma_node[:, None]
        if self.parametrization == "edm":
            sd2 = self.sigma_data**2
            x0 = center + sd2 / (s**2 + sd2) * (x - center) + s * self.sigma_data / jnp.sqrt(s**2 + sd2) * out
            eps = (x - x0) / s
        else:
            eps, x0 = out, x - s * out
        return jnp.where(m.node_mask[:, None], eps, 0.0), jnp.where(m.node_mask[:, None], x0, 0.0)

    def __call__(self, mdl, graph, x, code, sigma_node):
        """(ε̂, x̂₀, the encoder's features of the perturbed structure or None)."""
        x_in, noisy, center = self.inputs(mdl, graph, x, sigma_node)
        eps, x0 = self.outputs(mdl, graph, x, sigma_node, code, x_in, noisy, center)
        return eps, x0, noisy


def decode(model, graph, positions, code, log_sigma_per_node, denoiser: Denoiser):
    """(ε̂ [n, 3], the encoder's features of ``positions``) at ``positions`` (the perturbed
    structure), guided by z [n_graph, C], as ``denoiser`` (`Denoiser.of` a config) says."""
    eps, _, noisy = denoiser(model, graph, positions, code, jnp.exp(log_sigma_per_node))
    return eps, noisy


def loss_weight(sigma, sigma_data):
    """1/c_out² = (σ²+σ_d²)/(σσ_d)² [n_graph] (1/Å²): the x̂₀ losses' weight."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def kabsch_errors(x0_hat, graph):
    """Per molecule, mean over atoms and axes of the squared error of x̂₀ after the rotation (no
    reflection) and translation that best fit it to the clean structure [n_graph] (Å²). The
    rotation is held fixed in the gradient (it is optimal, so its own gradient term is 0)."""
    m = graph_masks(graph)
    ref = graph.nodes.positions
    p = x0_hat - masked_mean(x0_hat, m)[m.node_graph]
    q = ref - masked_mean(ref, m)[m.node_graph]
    w = m.node_mask.astype(p.dtype)[:, None, None]
    h = jax.ops.segment_sum(w * p[:, :, None] * q[:, None, :], m.node_graph, num_segments=m.n_graph)
    u, _, vt = jnp.linalg.svd(jax.lax.stop_gradient(h) + 1e-9 * jnp.eye(3))
    d = jnp.sign(jnp.linalg.det(u @ vt))
    rot = u @ (jnp.stack([jnp.ones_like(d), jnp.ones_like(d), d], -1)[..., None] * vt)  # [G, 3, 3]
    aligned = jnp.einsum("nk,nkl->nl", p, rot[m.node_graph])
    return masked_mean(((aligned - q) ** 2).mean(axis=-1), m)


@register
class GeoRecon(Objective):
    name = "georecon"
    curves = {
        "loss (dimensionless)": (("train", "loss", "train"), ("validation", "loss", "validation")),
        "GeoRecon terms (train)": tuple(
            ("train", k, k) for k in ("recon_loss", "recon_mse", "node_denoise_mse", "clean_mse")
        ),
        "distance error of x̂₀ (Å², train)": (("train", "recon_distance_mse", "train"),),
    }

    @property
    def denoiser(self) -> Denoiser:
        return Denoiser.of(self.config)

    def validate(self):
        problems = check_sigmas(self.cfg)
        dec, enc = self.config.model.get("decoder"), self.config.model.encoder
        if dec is None:
            problems.append("objective.name='georecon' needs model.decoder (coord.py sets it to None)")
            return problems
        if enc.features % dec.num_heads:
            problems.append(
                f"model.decoder.num_heads={dec.num_heads} does not divide "
                f"model.encoder.features={enc.features}"
            )
        if self.cfg.parametrization not in PARAMETRIZATIONS:
            problems.append(
                f"objective.parametrization={self.cfg.parametrization!r}: use one of {PARAMETRIZATIONS}"
            )
        if self.cfg.loss not in LOSSES:
            problems.append(f"objective.loss={self.cfg.loss!r}: use one of {LOSSES}")
        if self.cfg.sampler not in SAMPLERS:
            problems.append(f"objective.sampler={self.cfg.sampler!r}: use one of {SAMPLERS}")
        if not self.cfg.sigma_data > 0:
            problems.append(f"objective.sigma_data={self.cfg.sigma_data}: must be positive (Å)")
        if self.cfg.code_source not in ("clean", "noisy"):
            problems.append(f"objective.code_source={self.cfg.code_source!r}: use 'clean' or 'noisy'")
        if dec.input not in ("encoder", "atoms"):
            problems.append(f"model.decoder.input={dec.input!r}: use 'encoder' or 'atoms'")
        if dec.input == "atoms" and not dec.num_layers:
            problems.append(
                "model.decoder.input='atoms' with num_layers=0 would never see the perturbed "
                "positions: use num_layers >= 1"
            )
        return problems

    def heads(self):
        enc, dec = self.config.model.encoder, self.config.model.decoder
        return {
            "node_noise": VectorHead(enc.features),
            "graph_code": Dense(dec.code_dim),
            "decoder": GeometryDecoder(
                enc.features,
                dec.num_layers,
                dec.num_heads,
                dec.num_rbf,
                enc.cutoff,
                input=dec.input,
                topology=dec.topology,
                topology_layers=dec.topology_layers,
                max_z=enc.max_z,
            ),
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
        den, sigma_node = self.denoiser, sigma[m.node_graph]
        from_noisy = self.cfg.code_source == "noisy"
        need_noisy = self.cfg.node_denoise_weight > 0 or from_noisy
        x_in, noisy, center = den.inputs(model, graph, noisy_pos, sigma_node, need_noisy)
        z = graph_code(model, graph, noisy if from_noisy else clean)
        recon_eps, recon_x0 = den.outputs(model, graph, noisy_pos, sigma_node, z, x_in, noisy, center)
        node_head = model.heads["node_noise"]
        node_eps = node_head(*noisy) if noisy is not None else jnp.zeros_like(eps)
        return GeoReconOutputs(eps, sigma, recon_eps, recon_x0, node_eps, node_head(*clean))

    def loss(self, out: GeoReconOutputs, graph):
        m = graph_masks(graph)
        eps_mse = masked_mean(squared_error(out.recon_eps, out.eps), m)
        dist = distance_errors(out.recon_x0, graph)
        kind = self.cfg.loss
        if kind == "eps_mse":
            recon = eps_mse
        else:
            err = {
                "x0_distance": lambda: dist,
                "x0_kabsch": lambda: kabsch_errors(out.recon_x0, graph),
                "x0_spectrum": lambda: spectrum_errors(out.recon_x0, graph),
            }[kind]()
            recon = loss_weight(out.sigma, self.cfg.sigma_data) * err
        node = masked_mean(squared_error(out.node_eps, out.eps), m)
        clean = masked_mean((out.clean_eps**2).mean(axis=-1), m)
        total = recon + self.cfg.node_denoise_weight * node + self.cfg.clean_weight * clean
        return total, {
            "recon_loss": recon,
            "recon_mse": eps_mse,
            "recon_distance_mse": dist,
            "node_denoise_mse": node,
            "clean_mse": clean,
            "sigma": out.sigma,
        }

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
                model,
                self.cfg.sigma_min,
                self.cfg.sigma_max,
                self.cfg.num_sampling_steps,
                self.denoiser,
                self.cfg.sampler,
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
            "sampler": self.cfg.sampler,
        }
        t1 = time.perf_counter()
        diag = {}
        sigmas = tuple(self.cfg.diagnostic_sigmas or ())
        if sigmas:
            errors = jax.jit(make_decoder_errors_fn(model, sigmas, self.denoiser))
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


def make_decoder_errors_fn(model, sigmas, denoiser: Denoiser):
    """``errors(params, graph, key)``: `graph_code_diagnostic.decoder_errors` of a GeoRecon model
    (jittable): the perturbed molecule is encoded once per σ and decoded with each code."""

    def decode_many(mdl, g, positions, codes, log_sigma):
        sigma = jnp.exp(log_sigma)
        x_in, noisy, center = denoiser.inputs(mdl, g, positions, sigma)
        return [denoiser.outputs(mdl, g, positions, sigma, c, x_in, noisy, center)[0] for c in codes]

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
    rmsd_own, rmsd_other, spec_own, spec_other = [], [], [], []
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
                spec_own.append(spectrum_rmse(own[b][a:e], pos[a:e]))
                spec_other.append(spectrum_rmse(other[a:e], pos[a:e]))
    rmsd_own, rmsd_other = np.asarray(rmsd_own), np.asarray(rmsd_other)
    n = len(rmsd_own)
    return {
        "recon_rmsd_own": float(rmsd_own.mean()) if n else None,  # None: no same-size pair
        "recon_rmsd_other": float(rmsd_other.mean()) if n else None,
        "recon_own_closer_fraction": float(np.mean(rmsd_own < rmsd_other)) if n else None,
        # the same reconstructions scored by their sorted pair distances (Å; blind to which atom
        # is which, as the x0_spectrum loss)
        "recon_spectrum_rmse_own": float(np.mean(spec_own)) if n else None,
        "recon_spectrum_rmse_other": float(np.mean(spec_other)) if n else None,
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


SAMPLERS = ("ddim", "renoise")


def make_reconstruct_fn(model, *sampling, **sampling_kw):
    """``reconstruct(params, graph, key) -> positions [n, 3]``: rebuild coordinates from z alone.

    ``sampling``: `make_reconstruct_from_code_fn`'s (sigma_min, sigma_max, num_steps, denoiser,
    sampler).

    Starts from pure noise σ_max·ε and walks the geometric σ ladder down to σ_min. Each step
    estimates x̂₀ = x - σ_k ε̂(x, σ_k, z), then moves to σ_{k+1} by
      ``"ddim"`` (default): the deterministic (η = 0) update of a variance-exploding diffusion,
          x ← x̂₀ + σ_{k+1} ε̂: the noise the decoder found is put back, scaled down;
      ``"renoise"``: x ← x̂₀ + σ_{k+1} ε' with fresh ε' ~ N(0, 1) per atom (ancestral sampling
          without the posterior's mean term). For a decoder trained on a loss that is blind to
          which atom is which (``x0_spectrum``) or to the frame (``x0_distance``, ``x0_kabsch``),
          ε̂ = (x - x̂₀)/σ is not the noise that was added, and DDIM's deterministic walk
          compounds that; fresh noise at each level is what the decoder was trained on.
    Returns the last x̂₀.
    """
    from_code = make_reconstruct_from_code_fn(model, *sampling, **sampling_kw)
    code = make_code_fn(model)

    def reconstruct(params, graph, key):
        return from_code(params, graph, code(params, graph), key)

    return reconstruct


def make_reconstruct_from_code_fn(
    model,
    sigma_min: float,
    sigma_max: float,
    num_steps: int,
    denoiser: Denoiser,
    sampler: str,
):
    """``reconstruct(params, graph, code, key) -> positions [n, 3]``: `make_reconstruct_fn` with the
    graph code z [n_graph, C] given (the z diagnostic rebuilds a molecule from another's code)."""
    if sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}: use one of {SAMPLERS}")
    sigmas = sigma_ladder(sigma_min, sigma_max, num_steps)

    def reconstruct(params, graph, code, key):
        m = graph_masks(graph)
        mol, atom = graph.globals.graph_id[m.node_graph], graph.nodes.atom_index
        x = jnp.where(m.node_mask[:, None], sigmas[0] * per_atom_normal(key, mol, atom), 0.0)
        next_sigmas = jnp.concatenate([sigmas[1:], jnp.zeros(1)])
        # renoise: a stream apart from the start's; per-atom noise keyed by (molecule, atom), so a
        # molecule's sample does not depend on its batch
        step_keys = jax.random.split(jax.random.fold_in(key, 0x5E4D), len(sigmas))

        def step(x, s):
            sigma, sigma_next, k = s
            log_sigma = jnp.full(x.shape[0], jnp.log(sigma))
            e, _ = model.apply(params, graph, x, code, log_sigma, denoiser, method=decode)
            x0 = x - sigma * e
            if sampler == "renoise":
                e = per_atom_normal(k, mol, atom)
            x = jnp.where(m.node_mask[:, None], x0 + sigma_next * e, 0.0)
            return x, x0

        _, x0s = jax.lax.scan(step, x, (sigmas, next_sigmas, step_keys))
        return x0s[-1]

    return reconstruct


def spectrum_rmse(pred: np.ndarray, ref: np.ndarray) -> float:
    """Root mean square difference (Å) between the sorted pair distances of two structures of
    the same atoms: zero for any rigid motion or relabelling of the atoms."""
    i, j = np.triu_indices(len(ref), 1)
    d_pred = np.sort(np.linalg.norm(pred[i] - pred[j], axis=1))
    d_ref = np.sort(np.linalg.norm(ref[i] - ref[j], axis=1))
    return float(np.sqrt(np.mean((d_pred - d_ref) ** 2))) if len(i) else 0.0


def kabsch_rmsd(pred: np.ndarray, ref: np.ndarray) -> float:
    """RMSD (same unit as the inputs) after optimal rigid superposition (rotation + translation;
    reflections excluded)."""
    p = pred - pred.mean(0)
    q = ref - ref.mean(0)
    u, _, vt = np.linalg.svd(p.T @ q)
    d = np.sign(np.linalg.det(u @ vt))
    rot = u @ np.diag([1.0, 1.0, d]) @ vt
    return float(np.sqrt(np.mean(np.sum((p @ rot - q) ** 2, axis=1))))
