#!/bin/sh
# The seed's script: run_generate_data_base.sh DATA_DIR DET_MODEL REC_MODEL DB_OUT (the `gallery` task).
[ $# -eq 4 ] || { echo "usage: $0 DATA_DIR DET_MODEL REC_MODEL DB_OUT_DIR" >&2; exit 2; }
models=$("$(dirname "$0")/faceops-models" "$2" "$3") || exit 2
exec "$(dirname "$0")/faceops-task" "database=$4" "images=$1" "models=$models" -- python3 -m inference.job gallery
