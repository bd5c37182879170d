"""Coord with a σ ladder: Coord's node-level denoising with σ drawn per molecule from a geometric
ladder of noise levels (the README's worked example of adding an objective:
georecon_jax/objectives/coord_ladder.py).

  --config=experiments/configs/coord_ladder.py[:quick|:tiny]
"""

from experiments.configs import common, coord


def get_config(size=None):
    c = coord.get_config()
    c.objective.update(name="coord_ladder", schedule="ladder", sigma_min=0.01, sigma_max=1.0)
    c.objective.num_levels = 10  # σ levels, geometric from sigma_max down to sigma_min (Å)
    return common.resize(c, size, coord.SIZES)
