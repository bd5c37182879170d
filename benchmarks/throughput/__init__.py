"""Training throughput of georecon_jax vs torchmd-net 3.1.0, side by side in one run.

  bash benchmarks/setup_torch_env.sh            # once: makes benchmarks/.torch_venv (torch CPU build)
  GEORECON_CACHE=/tmp/gcache /work/venv/bin/python -m benchmarks.throughput

Options: --sizes cpu,paper  --objectives coord,georecon  --rounds N  --steps-per-round N
--no-torch  --micro-batches M  --devices D  --precision highest|tf32  --torch-device auto|cpu|cuda
--out benchmarks/results/throughput_<backend>  (writes .json and .md)  --check-args (check them, exit).

On a GPU the same command runs both sides on the card (JAX's backend decides; torch follows with
--torch-device auto) and adds the card's name, its peak FLOP/s for the precision used and the
fraction of it achieved, and both sides' peak device memory. --precision highest (the default)
makes both sides multiply float32 matrices in full float32, as on CPU; tf32 lets both use TF32
tensor cores (JAX's own GPU default, torch's `set_float32_matmul_precision("high")`). Set
GEORECON_TORCH_PYTHON to a Python that has torch + torchmd-net 3.1.0 where there is no
benchmarks/.torch_venv (a GPU machine whose own Python holds torch).

What is measured, per (size, objective), on 960 QM9 training molecules, batch 32,
in a fixed order that both frameworks share (a seeded random sample of 960
QM9 training molecules in random order, 18 atoms on average like QM9, so that every batch is a
random batch as in training):
  * molecules/s: 32 / median of the timed steps (forward + backward + AdamW). JAX and torch
    run in alternating blocks ("rounds") of the same batches, so machine load hits both alike;
    the ratio is also given per round (median reported).
  * the JAX step is the project's own `make_train_step` (shard_map over a 1-device mesh) fed by
    the project's `Prefetcher` (host batches prepared in a background thread): the time of an
    iteration includes waiting for the next batch.
  * compile time (AOT `lower().compile()` of every padded shape the batches use), FLOPs per step
    from XLA's cost analysis (mean over the timed batches' shapes), achieved FLOP/s, peak RSS of
    both processes, the padded node / edge fractions, and the host input-pipeline rate
    (batches/s that `GraphBatcher.batch` + device placement sustain on one thread) against the
    step rate.

Modules: cli.py (options, the run, its files), compare.py (one size and objective: rounds and
results), jax_side.py, torch_side.py (the two steps), machine.py (what it ran on), report.py (the
Markdown table), settings.py (batch, sample, sizes, precisions).
"""
