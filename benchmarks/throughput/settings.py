"""What every measurement shares: the batch, the molecule sample, the model sizes, the precisions."""

from __future__ import annotations

from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[1]  # benchmarks/
ROOT = BENCHMARKS.parent

BATCH_SIZE = 32
NUM_MOLECULES = 960
SAMPLE_SEED = 0

# --precision: float32 matrix products on GPUs (CPUs always multiply in float32).
# bf16: one bfloat16 pass with float32 accumulation (positions, forces and losses stay float32).
JAX_PRECISION = {"highest": "highest", "tf32": "tensorfloat32", "bf16": "bfloat16"}
TORCH_PRECISION = {"highest": "highest", "tf32": "high", "bf16": "medium"}
LAYOUTS = ("pairs", "dense")
OBJECTIVES = ("coord", "georecon")

SIZES = {
    "cpu": dict(num_layers=4, features=128, num_heads=8, num_rbf=32, cutoff=5.0, trainable_rbf=False),
    "paper": dict(num_layers=8, features=256, num_heads=8, num_rbf=64, cutoff=5.0, trainable_rbf=False),
}


def make_config(objective: str, size: str, micro_batches: int, devices: int = 1, num_buckets: int = 0):
    """The pretraining config of ``objective`` at model ``size`` with the benchmark's batch."""
    from experiments.configs import coord, georecon

    cfg = (georecon if objective == "georecon" else coord).get_config()
    cfg.batch_size = BATCH_SIZE
    cfg.num_devices = devices
    cfg.model.encoder.update(SIZES[size])
    if micro_batches >= 0:
        cfg.micro_batches = micro_batches
    if num_buckets > 0:  # fewer padded shapes: less compile time (e.g. a short GPU session)
        cfg.graph.num_buckets = num_buckets
    if objective == "georecon":
        cfg.model.decoder.update(
            code_dim=SIZES[size]["features"], num_heads=SIZES[size]["num_heads"], num_rbf=32
        )
    cfg.optim.warmup_steps = 10
    return cfg
