"""Fine-tuned models in other programs' terms: an ASE calculator (``ase_calculator``; ASE is an
optional dependency: ``pip install 'georecon_jax[ase]'``)."""
