#!/usr/bin/env bash
# Set up .venv (reusing it and the cached mmcv wheel when present) and run the test suite.
# Extra arguments go to pytest, e.g. `bash tools/run_tests.sh -k hook -x`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash tools/setup_env.sh 2>&1 | grep -v "is ignored: it is neither a file nor a directory" || {
  echo "[run_tests] environment setup failed" >&2; exit 1; }
exec "$ROOT/.venv/bin/python" -m pytest tests -ra "$@"
