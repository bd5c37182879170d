#!/usr/bin/env bash
# Packs what `python -m benchmarks.throughput` needs on a GPU machine without network access whose
# own Python already has JAX (CUDA), flax, optax, orbax, absl, tqdm and torch (this workplace's
# device machines): the QM9 cache and the pure-Python wheels that image lacks, into .whl/
# (git-ignored, 49 MB: under the device tool's 64 MiB per call). Run it here, with the project's
# environment active (it reads the QM9 cache, building it once if needed):
#
#   bash benchmarks/gpu_bundle.sh            # .whl/: QM9 cache + jraph, ml-collections, e3nn-jax
#   bash benchmarks/gpu_bundle.sh --pipeline # also grain and its dependencies (for Python
#                                            # $DEVICE_PY, default 3.12): benchmarks/gpu_pipeline.sh
#   bash benchmarks/gpu_bundle.sh --torch    # also .whl_torch/: torchmd-net 3.1.0 (from
#                                            # benchmarks/.torch_venv) and ase; and warp-lang
#                                            # (149 MB, over one call's 64 MiB) in three parts,
#                                            # .whl_warp0/ .whl_warp1/ .whl_warp2/
#
# Then on the device (JAX side only; one call, carry [".whl"]):
#   python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl &&
#   PYTHONPATH=/tmp/site GEORECON_CACHE=.whl python3 -m benchmarks.throughput --no-torch \
#       --sizes cpu --out $OUT/throughput_gpu_cpu_scale
# and the same with --sizes paper (one size per call keeps each call inside the 10-minute limit).
# With torchmd-net: benchmarks/results/NOTES.md, "GPU runs".
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python}"
mkdir -p .whl
"$PYTHON" - <<'PY'
import os, shutil
from georecon_jax.data.qm9 import _cache_path, default_cache_dir, load_qm9
cache = os.environ.get("GEORECON_CACHE") or default_cache_dir()
load_qm9(cache_dir=cache, split_seed=0, verbose=True)  # builds the cache once if missing
shutil.copy(_cache_path(cache, None), os.path.join(".whl", "qm9.npz"))
PY
for spec in $(grep -E '^(jraph|ml-collections|e3nn-jax)==' requirements.txt); do
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d .whl "$spec"
done
if [ "${1:-}" = "--pipeline" ]; then
  for spec in $(grep -E '^grain==' requirements.txt) array-record cloudpickle etils portpicker; do
    "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: \
      --python-version "${DEVICE_PY:-3.12}" -d .whl "$spec"
  done
fi
if [ "${1:-}" = "--torch" ]; then
  venv_site=$(ls -d benchmarks/.torch_venv/lib/python3*/site-packages)
  mkdir -p .whl_torch
  tar -C "$venv_site" -czf .whl_torch/torchmdnet.tar.gz torchmdnet
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: -d .whl_torch ase
  tmp=$(mktemp -d)
  "$PYTHON" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --implementation cp --platform manylinux_2_28_x86_64 -d "$tmp" warp-lang==1.19.0
  basename "$tmp"/warp_lang-*.whl > .whl_torch/warp.name
  split -n 3 -d -a 1 "$tmp"/warp_lang-*.whl "$tmp/part"
  for k in 0 1 2; do mkdir -p ".whl_warp$k" && mv "$tmp/part$k" ".whl_warp$k/part$k"; done
  rm -r "$tmp"
fi
du -sh .whl .whl_torch .whl_warp* 2>/dev/null || true
