#!/usr/bin/env bash
# The GPU check of the input pipeline: batch preparation with the thread, 1 worker and all the
# host's cores (less two) against the card's step rate, batch 32 and 128, Coord and GeoRecon,
# both layouts, float32 and bf16 matrix products. Writes benchmarks/results/pipeline_gpu_<precision>.*
# (or under $OUT). About 6 minutes on one H100/H200 (two calls of benchmarks.pipeline, each
# capped at 200 s by `timeout`).
#
# Prepare here (the device has no network): bash benchmarks/gpu_bundle.sh --pipeline
# (the QM9 cache and the wheels the device image lacks, grain's included, into .whl/). Then one
# device call with carry [".whl"]:   bash benchmarks/gpu_pipeline.sh
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site GEORECON_CACHE=.whl
fi
out="${OUT:-benchmarks/results}"
all=$(( $(nproc) - 2 ))
workers="0,1"
if [ "$all" -gt 1 ]; then workers="0,1,$all"; fi
for precision in highest bf16; do
  timeout 200 python3 -m benchmarks.pipeline --batches 1000 --steps 30 --batch-sizes 32,128 \
    --workers "$workers" --precision "$precision" --out "$out/pipeline_gpu_$precision" ||
    echo "pipeline check ($precision) stopped: exit $?"
done
