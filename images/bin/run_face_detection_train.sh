#!/bin/sh
# The seed's script: run_face_detection_train.sh DATA_DIR MODEL_OUT_DIR (the `detection` task).
[ $# -eq 2 ] || { echo "usage: $0 DATA_DIR MODEL_OUT_DIR" >&2; exit 2; }
exec faceops-task "model=$2" "train=$1" -- python3 -m train.detection
