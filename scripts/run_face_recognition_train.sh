#!/usr/bin/env bash
# The seed tutorial's recognition training script, kept as a thin wrapper:
#   run_face_recognition_train.sh DATA_PATH MODEL_OUTPUT_PATH [KEY=VALUE ...]
# DATA_PATH: an insightface RecordIO folder (train.rec/.idx/property, or the seed's cele.*).
# MODEL_OUTPUT_PATH: gets model-symbol.json, model-0000.params and model.onnx; checkpoints go to
# MODEL_OUTPUT_PATH/checkpoints, so running it again resumes. KEY=VALUE: hyperparameters of the
# recognition task (network=r50 lr=0.1 ...). Same code as a `task: recognition` job.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 DATA_PATH MODEL_OUTPUT_PATH [KEY=VALUE ...]" >&2
  exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
data="$1"
out="$2"
shift 2
mkdir -p "$out"
exec env PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" \
  FACEOPS_CHANNELS=train FACEOPS_CHANNEL_TRAIN="$data" FACEOPS_MODEL_DIR="$out" \
  FACEOPS_CHECKPOINT_DIR="$out/checkpoints" FACEOPS_FAILURE_FILE="$out/failure" \
  FACEOPS_METRICS_FILE="$out/metrics.jsonl" FACEOPS_HYPERPARAMETERS="$out/hyperparameters.json" \
  "${PYTHON:-python3}" -m train.recognition "$@"
