"""Accelerator settings every entry point applies: float32 matrix-product precision and XLA's
persistent compilation cache.

``config.matmul_precision`` (default ``highest``): TPUs (and GPUs with TF32) otherwise run float32
matrix products in bfloat16 (or TF32) passes; ``highest`` keeps float32 accuracy, which the tests,
the reference comparisons and the float32 energies of MD17 molecules rely on. ``default`` (the
device's own choice), ``high`` (3 bfloat16 passes on TPU), ``bf16`` (one bfloat16 pass) and
``tf32`` trade accuracy for speed. On CPU every setting computes in float32.

``config.compilation_cache_dir`` (default unset): a folder where XLA keeps compiled programs, so
that a second run of the same model skips compilation (useful on TPU VMs and Colab, where a
paper-scale step compiles for minutes).
"""

from __future__ import annotations

import contextlib
import logging
from typing import Optional

import jax

log = logging.getLogger(__name__)

# config value -> jax's jax_default_matmul_precision value
MATMUL_PRECISIONS = {
    "highest": "highest",
    "high": "high",
    "default": "default",
    "bf16": "bfloat16",
    "bfloat16": "bfloat16",
    "tf32": "tensorfloat32",
    "tensorfloat32": "tensorfloat32",
    "float32": "float32",
}
DEFAULT_MATMUL_PRECISION = "highest"


def jax_matmul_precision(name: Optional[str]) -> str:
    """JAX's name for a ``matmul_precision`` setting (None: the default, ``highest``).

    Raises:
      ValueError naming the valid settings.
    """
    name = DEFAULT_MATMUL_PRECISION if name is None else str(name)
    if name not in MATMUL_PRECISIONS:
        raise ValueError(
            f"matmul_precision={name!r}: use one of {', '.join(sorted(set(MATMUL_PRECISIONS)))} "
            "('highest' keeps float32 products exact on TPUs)"
        )
    return MATMUL_PRECISIONS[name]


def apply_accelerator_settings(config) -> dict:
    """Applies ``config.matmul_precision`` and ``config.compilation_cache_dir`` (either may be
    absent: older configs) to JAX's global configuration; returns what was applied."""
    get = config.get if hasattr(config, "get") else (lambda k, d=None: getattr(config, k, d))
    precision = jax_matmul_precision(get("matmul_precision", None))
    jax.config.update("jax_default_matmul_precision", precision)
    applied = {"matmul_precision": precision}
    cache = get("compilation_cache_dir", None)
    if cache:
        import os

        cache = os.path.abspath(os.path.expanduser(str(cache)))
        os.makedirs(cache, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", cache)
        applied["compilation_cache_dir"] = cache
        log.info("XLA compilation cache: %s", cache)
    return applied


def matmul_precision_scope(name: Optional[str]):
    """A context in which traced matrix products use ``name``'s precision (library calls that
    should not change JAX's global setting, e.g. `georecon_jax.tasks.inference`)."""
    if name is None:
        return contextlib.nullcontext()
    return jax.default_matmul_precision(jax_matmul_precision(name))
