#!/usr/bin/env bash
# The seed tutorial's recognition batch script, kept as a thin wrapper:
#   run_face_recognition.sh DATA DB DET_MODEL REC_MODEL [OUT]
# DATA: images (folder, s3:// prefix or .txt list); DB: gallery from run_generate_data_base.sh.
# Writes OUT/report.csv and OUT/report.jsonl (default OUT: ./recognition_result). Same as `faceops identify`.
set -euo pipefail
if [ $# -lt 4 ] || [ $# -gt 5 ]; then
  echo "usage: $0 DATA DB DET_MODEL REC_MODEL [OUT]" >&2
  exit 2
fi
root="$(cd "$(dirname "$0")/.." && pwd)"
exec env PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}" "${PYTHON:-python3}" -m cli \
  identify "$1" --gallery "$2" --det-model "$3" --rec-model "$4" --out "${5:-recognition_result}"
