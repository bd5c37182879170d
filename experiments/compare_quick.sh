#!/usr/bin/env bash
# The GeoRecon-vs-Coord comparison at CPU scale, from one command:
#   bash experiments/compare_quick.sh [WORKDIR] [TARGET] [FINETUNE_STEPS]
# Pretrains GeoRecon and Coord (quick configs, 600 steps each, QM9 training molecules), fine-tunes
# one QM9 target (default homo, 10,000 labels, quick model) from each and from scratch, evaluates
# on the first 2,000 test molecules, and prints a Markdown table (also WORKDIR/comparison.md).
# Workdirs that already hold a finished run are resumed (nothing is redone).
set -euo pipefail
cd "$(dirname "$0")/.."
WORK="${1:-runs/compare}"
TARGET="${2:-homo}"
STEPS="${3:-400}"
python -m experiments.pretrain --config=experiments/configs/georecon.py:quick --workdir="$WORK/pretrain_georecon"
python -m experiments.pretrain --config=experiments/configs/coord.py:quick --workdir="$WORK/pretrain_coord"
for init in scratch georecon coord; do
  extra=()
  [ "$init" != scratch ] && extra=(--config.pretrained="$WORK/pretrain_$init")
  python -m experiments.finetune --config=experiments/configs/finetune_qm9.py:quick --config.target="$TARGET" \
    --config.num_steps="$STEPS" --config.eval_every=$((STEPS / 2)) --config.checkpoint_every=$((STEPS / 2)) \
    "${extra[@]}" --workdir="$WORK/${TARGET}_$init"
done
python - "$WORK" "$TARGET" "$STEPS" <<'PY'
import json, os, sys
work, target, steps = sys.argv[1], sys.argv[2], sys.argv[3]
rows = ["| encoder initialisation | test MAE | molecules | checkpoint step |", "|---|---:|---:|---:|"]
for init in ("scratch", "georecon", "coord"):
    r = json.load(open(os.path.join(work, f"{target}_{init}", "results.json")))
    m = r["metrics"][f"{target}_mae"]
    rows.append(f"| {init} | {m['value']:.1f} {m['unit']} | {r['num_molecules']} | {r['step']} |")
table = (f"QM9 {target}, 10,000 training labels, {steps} fine-tuning steps, quick model (3 × 64); "
         "pretraining: 600 steps of batch 32 (quick configs)\n\n" + "\n".join(rows) + "\n")
open(os.path.join(work, "comparison.md"), "w").write(table)
print(table)
PY
