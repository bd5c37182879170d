#!/usr/bin/env bash
# The benchmark command: training throughput (molecules/s) of georecon_jax against torchmd-net 3.1.0,
# measured side by side in one run, then the 3DMRL environment rate. Results: benchmarks/results/.
set -euo pipefail
cd "$(dirname "$0")/.."
bash benchmarks/setup_torch_env.sh
python -m benchmarks.throughput "$@"
python -m benchmarks.mrl3d_env --out benchmarks/results/mrl3d_env.json
