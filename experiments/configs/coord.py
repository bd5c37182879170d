"""Coord (Zaidi et al., ICLR 2023): node-level denoising, σ = 0.04 Å, the baseline of GeoRecon.

Same encoder and data as georecon.py; no graph code or decoder. Sizes: '', ':quick', ':tiny'.
"""
from experiments.configs import georecon


def get_config(size: str = ""):
    c = georecon.base_config()
    c.model.decoder = None
    c.objective.name = "coord"
    c.objective.schedule = "fixed"
    c.objective.sigma_min = 0.04
    c.objective.sigma_max = 0.04
    c.objective.num_recon_molecules = 0
    return georecon.apply_size(c, size)
