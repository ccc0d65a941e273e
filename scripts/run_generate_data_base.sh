#!/usr/bin/env bash
# The seed tutorial's gallery batch script, kept as a thin wrapper:
#   run_generate_data_base.sh DATA DET_MODEL REC_MODEL DB_OUT
# DATA: folder or s3:// prefix with one sub-folder of photos per person. DET_MODEL / REC_MODEL: ONNX
# file or folder. DB_OUT: gallery folder or s3:// prefix. Same as `faceops gallery build`.
set -euo pipefail
if [ $# -ne 4 ]; then
  echo "usage: $0 DATA DET_MODEL REC_MODEL DB_OUT" >&2
  exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
exec env PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m cli \
  gallery build "$1" "$4" --det-model "$2" --rec-model "$3"
