#!/usr/bin/env bash
# Set up .venv (reusing it when present) and run the main job on the embedded digits data.
# Extra arguments go to tools/main_job.py, e.g. `bash tools/run_main_job.sh --fast`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup_env.sh 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || {
  echo "[run_main_job] environment setup failed" >&2; exit 1; }
exec "$ROOT/.venv/bin/python" tools/main_job.py "$@"
