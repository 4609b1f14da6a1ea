#!/usr/bin/env bash
# Render a photo through the Android demo's own code path (android_demo/core + the JNI ExecuTorch
# runner) on this machine; builds what it needs on first use. `render.sh --help` lists the flags.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
build="$(bash "$here/build.sh")"
exec java -Dmagicbokeh.jni.library="$build/libmagicbokeh_jni.so" -cp "$build/classes" com.magicbokeh.host.HostRender "$@"
