#!/usr/bin/env bash
# The benchmark command: training throughput (molecules/s) of georecon_jax against torchmd-net 3.1.0,
# measured side by side in one run, then the input pipeline (batch preparation with 0, 1 and 2
# worker processes against the step rate) and the 3DMRL environment rate. Results: benchmarks/results/.
#
#   bash benchmarks/run.sh [--data-root DIR] [throughput options, see benchmarks/throughput/]
#
# The 3DMRL benchmark reads solvation/combisolv.csv under --data-root DIR, else $GEORECON_DATA, else
# ../shared/data beside the checkout. Its inputs are checked first; when one is missing it is
# skipped with a one-line reason (and the command still succeeds) instead of failing at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
data_root="${GEORECON_DATA:-}"
args=()
while [ $# -gt 0 ]; do
    case "$1" in
        --data-root=*) data_root="${1#*=}"; shift ;;
        --data-root) data_root="${2:?--data-root needs a folder}"; shift 2 ;;
        *) args+=("$1"); shift ;;
    esac
done
mrl_args=(--out benchmarks/results/mrl3d_env.json)
if [ -n "$data_root" ]; then mrl_args+=(--data-root "$data_root"); fi
# Exit status 3: an input is missing (reason printed), skip; anything else non-zero: stop now.
mrl_status=0
python -m benchmarks.mrl3d_env --check "${mrl_args[@]}" || mrl_status=$?
if [ "$mrl_status" != 0 ] && [ "$mrl_status" != 3 ]; then exit "$mrl_status"; fi
python -m benchmarks.throughput --check-args ${args[@]+"${args[@]}"}
bash benchmarks/setup_torch_env.sh
python -m benchmarks.throughput ${args[@]+"${args[@]}"}
python -m benchmarks.pipeline
if [ "$mrl_status" = 0 ]; then
    python -m benchmarks.mrl3d_env "${mrl_args[@]}"
else
    echo "3DMRL environment benchmark skipped (see the reason printed at the start)"
fi
