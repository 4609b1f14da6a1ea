#!/usr/bin/env bash
# Create (or refresh) the project's virtual environment in .venv. Idempotent: it reinstalls only
# when pyproject.toml changed since the last successful install. Sourced by main.sh and test.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.installed-pyproject.sha256"
want="$(sha256sum "$root/pyproject.toml" | cut -d' ' -f1)"
# System packages the Android demo's host build and tests need (android_demo/host/build.sh): a JDK
# 17, g++ and Debian's JUnit 5 jars. Installed only when missing; apt-get update runs only then.
apt_packages=(openjdk-17-jdk-headless g++ junit5)
missing=()
for pkg in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ "${#missing[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "[setup] installing ${missing[*]} (Debian packages for the Android demo's Java / JNI build and tests)"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null \
      || { echo "[setup] apt-get could not install ${missing[*]}" >&2; exit 1; }
  else
    echo "[setup] skipping ${missing[*]}: apt-get is unavailable or this is not root; the Android demo's tests" \
         "(tests/android_demo) will fail until they are installed" >&2
  fi
fi

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
