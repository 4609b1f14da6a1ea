#!/usr/bin/env bash
# The test command: set up .venv if needed, then run the test suite (slow full-scale checks are
# skipped unless --run-slow is passed). Extra arguments go to pytest. pytest ends with the 40
# slowest tests (--durations=40), so a CI log shows where the time goes.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
set +e
"$root/.venv/bin/python" -m pytest -p no:cacheprovider --durations=40 "$@"
code=$?
set -e
if [ "$code" -eq 5 ]; then
  echo "pytest collected no tests: that is a failure" >&2
  exit 1
fi
exit "$code"
