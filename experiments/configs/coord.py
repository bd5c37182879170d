"""Coord (Zaidi et al., ICLR 2023): node-level denoising, σ = 0.04 Å, the baseline of GeoRecon.

  --config=experiments/configs/coord.py         paper scale
  --config=experiments/configs/coord.py:quick   2 CPU cores, a few minutes
  --config=experiments/configs/coord.py:tiny    seconds; used by the tests
  --config=experiments/configs/coord.py:md17    paper scale with the MD17 fine-tuning encoder

Same encoder, data, optimizer and sizes as georecon.py; no graph code or decoder.
"""

from experiments.configs import common, georecon

SIZES = georecon.SIZES


def get_config(size=None):
    c = georecon.get_config()

    # Model: the encoder only.
    c.model.decoder = None

    # Objective: one fixed σ.
    c.objective.update(name="coord", schedule="fixed", sigma_min=0.04, sigma_max=0.04)
    for field in ("parametrization", "loss", "sigma_data", "sampler"):  # the decoder's, not Coord's
        del c.objective[field]
    c = common.resize(c, size, SIZES)
    # No graph code to rebuild from, at every size (georecon's overlays set it for quick and tiny).
    c.objective.num_recon_molecules = 0
    return c
