#!/bin/sh
# The seed's script: run_face_recognition.sh DATA_DIR DB DET_MODEL REC_MODEL (the `identify` task);
# the report goes to ./results unless FACEOPS_RESULTS_DIR says otherwise.
[ $# -eq 4 ] || { echo "usage: $0 DATA_DIR DB_DIR DET_MODEL REC_MODEL" >&2; exit 2; }
models=$("$(dirname "$0")/faceops-models" "$3" "$4") || exit 2
exec "$(dirname "$0")/faceops-task" "report=${FACEOPS_RESULTS_DIR:-results}" "images=$1" "gallery=$2" "models=$models" -- python3 -m inference.job identify
