#!/usr/bin/env bash
# The main job: set up .venv if needed, then export the built-in default model to every backend
# this machine can build for, measure parity against the fp32 torch reference, and render a sample
# photo through each backend. No downloads. Extra arguments go to `python -m export.run_all`.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/setup_env.sh"
cd "$root"
exec "$root/.venv/bin/python" -m export.run_all "$@"
