"""The machine a measurement ran on: its description, its measured matrix-product rate, the peak
FLOP/s of a known GPU, and peak memory."""

from __future__ import annotations

import datetime
import os
import platform
import resource
import time

import numpy as np

from benchmarks.throughput.settings import JAX_PRECISION

# Dense peak FLOP/s of the cards this benchmark may meet, from NVIDIA's data sheets: float32 on
# CUDA cores ("highest": what full-float32 products can use) and TF32 tensor cores ("tf32").
# Matched against jax's device_kind, first match wins (so "H100 PCIe" before "H100").
GPU_PEAK_FLOPS = [
    ("H100 PCIe", {"highest": 51.2e12, "tf32": 378e12, "bf16": 756e12}),
    ("H100", {"highest": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12}),  # SXM5
    ("H200", {"highest": 66.9e12, "tf32": 494.7e12, "bf16": 989.4e12}),
    ("A100", {"highest": 19.5e12, "tf32": 156e12, "bf16": 312e12}),
]


def accelerator_peak(device_kind: str, precision: str):
    """(peak FLOP/s, what it is) of a GPU for float32 products at ``precision``; (None, why) if unknown."""
    for name, peaks in GPU_PEAK_FLOPS:
        if name.lower() in device_kind.lower():
            basis = {
                "highest": "float32 CUDA cores",
                "tf32": "TF32 tensor cores",
                "bf16": "BF16 tensor cores",
            }[precision]
            return peaks[precision], f"{name} dense {basis}, NVIDIA data sheet"
    return None, f"no peak on record for {device_kind!r} (add it to GPU_PEAK_FLOPS)"


def measured_matmul_rate(precision: str = "highest", sizes=(512, 1024, 2048), repeats: int = 5) -> dict:
    """This machine's float32 matrix-product rate, measured now (the arithmetic limit the step's
    achieved FLOP/s is compared with): the best over ``sizes`` of the median of ``repeats`` jitted
    [n, n] x [n, n] products at ``precision``, in FLOP/s (2 n^3 per product)."""
    import jax
    import jax.numpy as jnp

    best, per_size = 0.0, {}
    for n in sizes:
        a = jax.random.normal(jax.random.PRNGKey(0), (n, n), jnp.float32)
        b = jax.random.normal(jax.random.PRNGKey(1), (n, n), jnp.float32)
        f = jax.jit(lambda a, b: jnp.matmul(a, b, precision=JAX_PRECISION[precision]))
        f(a, b).block_until_ready()
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            f(a, b).block_until_ready()
            times.append(time.perf_counter() - t)
        per_size[n] = 2 * n**3 / float(np.median(times))
        best = max(best, per_size[n])
    return {"flops_per_s": best, "per_size": {str(k): v for k, v in per_size.items()}, "precision": precision}


def device_peak_memory_mb():
    """Peak bytes in use on JAX's first device (accelerators; None on CPU)."""
    import jax

    stats = jax.devices()[0].memory_stats() if jax.default_backend() != "cpu" else None
    return stats["peak_bytes_in_use"] / 2**20 if stats and "peak_bytes_in_use" in stats else None


def cpu_model() -> str:
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_description(torch_info=None, precision: str = "highest") -> dict:
    import flax
    import jax
    import jaxlib
    import optax

    backend = jax.default_backend()
    kind = jax.devices()[0].device_kind
    d = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpu_model": cpu_model(),
        "logical_cores": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "jaxlib": jaxlib.__version__,
        "flax": flax.__version__,
        "optax": optax.__version__,
        "jax_backend": backend,
        "jax_devices": [str(x) for x in jax.devices()],
        "gpu": (kind if backend == "gpu" else "none: no GPU was available in this session; CPU numbers only"),
        "matmul_precision": precision,
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "load_average_at_start": os.getloadavg(),
    }
    if backend == "gpu":
        d["peak_flops_per_s"], d["peak_flops_source"] = accelerator_peak(kind, precision)
    if torch_info:
        d.update(torch_info)
    return d


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
