#!/bin/sh
# The seed's script: run_face_detection_train.sh DATA_DIR MODEL_OUT_DIR [KEY=VALUE ...] (the `detection`
# task). KEY=VALUE pairs are the task's hyperparameters; running it again resumes from
# MODEL_OUT_DIR/checkpoints. Same code as a `task: detection` job.
[ $# -ge 2 ] || { echo "usage: $0 DATA_DIR MODEL_OUT_DIR [KEY=VALUE ...]" >&2; exit 2; }
data=$1 out=$2
shift 2
for pair do set -- "$@" --hp "$pair"; shift; done
exec "$(dirname "$0")/faceops-task" "model=$out" "train=$data" "$@" -- python3 -m train.detection
