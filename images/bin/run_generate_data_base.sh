#!/bin/sh
# The seed's script: run_generate_data_base.sh DATA_DIR DET_MODEL REC_MODEL DB_OUT (the `gallery` task).
[ $# -eq 4 ] || { echo "usage: $0 DATA_DIR DET_MODEL_DIR REC_MODEL_DIR DB_OUT_DIR" >&2; exit 2; }
exec faceops-task inference.gallery "$4" "images=$1" "detector=$2" "recognizer=$3"
