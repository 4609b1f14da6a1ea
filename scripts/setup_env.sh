#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv. Idempotent: it reinstalls only
# when pyproject.toml changed since the last successful install. Sourced by main.sh and test.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.installed-pyproject.sha256"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
python="${PYTHON:-python3.11}"
command -v "$python" >/dev/null 2>&1 || python=python3
if [ ! -x "$venv/bin/python" ]; then
  echo "[setup] creating $venv with $("$python" --version 2>&1)"
  "$python" -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  echo "[setup] installing the toolkit and its pinned dependencies (first run: a few minutes)"
  "$venv/bin/python" -m pip install --quiet --disable-pip-version-check -e "$root[all,dev]" 2>&1 \
    | grep -v "is ignored: it is neither a file nor a directory" || true
  "$venv/bin/python" -c "import torch, executorch, coremltools, onnxruntime, diffusers" \
    || { echo "[setup] the environment does not import; see the pip output above" >&2; exit 1; }
  echo "$want" > "$stamp"
fi
