"""georecon_jax: self-supervised 3D molecular pretraining in JAX (GeoRecon, Coord, 3DMRL).

``georecon_jax.load_model(path)`` loads a fine-tuned model (a workdir or an exported ``.npz``) to
predict on new molecules (`georecon_jax.tasks.inference`); it is imported on first use, so that
``import georecon_jax`` stays light.
"""

__version__ = "0.1.0"


def __getattr__(name):
    if name in ("load_model", "Model", "Predictions"):
        from georecon_jax.tasks import inference

        return getattr(inference, name)
    raise AttributeError(f"module 'georecon_jax' has no attribute {name!r}")
