"""georecon_jax: self-supervised 3D molecular pretraining in JAX (GeoRecon, Coord, 3DMRL)."""
