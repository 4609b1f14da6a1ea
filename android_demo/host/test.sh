#!/usr/bin/env bash
# Build and run the Android demo's JUnit tests (core and the JNI runner) once.
#   test.sh --goldens DIR --artifacts DIR --reports-dir DIR
# --goldens: folder of golden folders (python -m runtime_py golden) named as the tests expect;
# --artifacts: an ExecuTorch XNNPACK fp32 artifacts folder for the JNI tests;
# --reports-dir: where the JUnit XML report goes (tests/android_demo reads it).
# Normally run by pytest (tests/android_demo), which generates the goldens and the artifacts.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
goldens="" artifacts="" reports=""
while [ $# -gt 0 ]; do
  case "$1" in
    --goldens) goldens="$2"; shift 2 ;;
    --artifacts) artifacts="$2"; shift 2 ;;
    --reports-dir) reports="$2"; shift 2 ;;
    -h|--help) sed -n '2,8p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "test.sh: unknown argument '$1'" >&2; exit 2 ;;
  esac
done
[ -n "$goldens" ] && [ -n "$artifacts" ] && [ -n "$reports" ] || { echo "test.sh: --goldens, --artifacts and --reports-dir are required" >&2; exit 2; }
build="$(bash "$here/build.sh" --tests)"
exec java -Dmagicbokeh.goldens="$goldens" -Dmagicbokeh.artifacts="$artifacts" \
  -Dmagicbokeh.jni.library="$build/libmagicbokeh_jni.so" \
  -jar /usr/share/java/junit-platform-console-standalone.jar \
  --class-path "$build/classes:$build/test-classes" --scan-class-path "$build/test-classes" \
  --reports-dir "$reports" --disable-banner --details=summary --disable-ansi-colors
