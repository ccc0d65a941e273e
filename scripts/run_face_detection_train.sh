#!/usr/bin/env bash
# The seed tutorial's detection training script, kept as a thin wrapper:
#   run_face_detection_train.sh DATA_PATH MODEL_OUTPUT_PATH [KEY=VALUE ...]
# DATA_PATH: detection_train_data/ (train/ and optional val/, each images/ + label.txt or packed
# RecordIO). MODEL_OUTPUT_PATH receives model.onnx. KEY=VALUE pairs are hyperparameters
# (see `faceops job submit --help` and examples/detection.yaml). Same as `task: detection`.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 DATA_PATH MODEL_OUTPUT_PATH [KEY=VALUE ...]" >&2
  exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
data="$(cd "$1" && pwd)"
mkdir -p "$2"
out="$(cd "$2" && pwd)"
shift 2
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
"${PYTHON:-python3}" -c 'import json, sys; json.dump(dict(a.split("=", 1) for a in sys.argv[2:]), open(sys.argv[1], "w"))' \
  "$work/hyperparameters.json" "$@"
exec env PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" \
  FACEOPS_HYPERPARAMETERS="$work/hyperparameters.json" FACEOPS_CHANNELS=train FACEOPS_CHANNEL_TRAIN="$data" \
  FACEOPS_MODEL_DIR="$out" FACEOPS_CHECKPOINT_DIR="${FACEOPS_CHECKPOINT_DIR:-$out/checkpoints}" \
  FACEOPS_FAILURE_FILE="$out/failure" FACEOPS_METRICS_FILE="$out/metrics.jsonl" \
  "${PYTHON:-python3}" -m train.detection
