#!/usr/bin/env bash
# Makes benchmarks/.torch_venv: the PyTorch reference (torchmd-net 3.1.0) for benchmarks/throughput/.
# Pin torch to the CPU build (plain `pip install torch` would pull the CUDA wheels). Where no local
# CPU wheel is configured (pip find-links), set TORCH_INDEX=https://download.pytorch.org/whl/cpu.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
venv="$here/.torch_venv"
python="${PYTHON:-python3}"
if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
"$venv/bin/pip" install --quiet --upgrade pip wheel >/dev/null 2>&1 || true
"$venv/bin/pip" install torch==2.13.0 torchmd-net==3.1.0 numpy ${TORCH_INDEX:+--extra-index-url "$TORCH_INDEX"}
"$venv/bin/python" -c "import torch, torchmdnet; print('torch', torch.__version__, 'torchmd-net ok')"
