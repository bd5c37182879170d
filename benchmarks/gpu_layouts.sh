#!/usr/bin/env bash
# Issue 18 on a lent GPU: the JAX step in both batch layouts (pairs, dense) at both matrix-product
# precisions (float32 'highest'; 'bf16' = one bfloat16 pass, float32 accumulation), molecules/s and
# the fraction of the matrix-product rate measured in the same run. JAX only: torchmd-net's warp
# neighbour lists need three more device calls to install (NOTES.md, "GPU runs").
#
# Here, once: bash benchmarks/gpu_bundle.sh   (.whl/: QM9 cache, jraph, ml-collections, e3nn-jax)
# Then one device call, carry [".whl"]:  bash benchmarks/gpu_layouts.sh
# Each configuration is written to $OUT as soon as it has run (a call cut off at its limit keeps
# what finished). Order: paper scale first (what GPUs are for), then bf16, then CPU scale.
set -u
OUT="${OUT:-/tmp/gpu_layouts}"
mkdir -p "$OUT"
if [ -d .whl ] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD GEORECON_CACHE="$PWD/.whl"
fi
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/nvidia_smi.txt" 2>&1 || true
run() {  # size precision
  timeout "${STEP_LIMIT:-200}" "$PY" -m benchmarks.throughput --no-torch --sizes "$1" --precision "$2" \
    --num-buckets "${NUM_BUCKETS:-2}" --rounds "${ROUNDS:-4}" --steps-per-round "${STEPS:-10}" \
    ${EXTRA:-} --out "$OUT/throughput_gpu_$1_$2" > "$OUT/log_$1_$2.txt" 2>&1
  echo "$1 $2: exit $?"; tail -n 4 "$OUT/log_$1_$2.txt"
}
run paper highest
run paper bf16
run cpu highest
run cpu bf16
