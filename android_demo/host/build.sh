#!/usr/bin/env bash
# Build the Android demo's host parts into android_demo/build/ (git-ignored), only when a source
# changed: the Java core, the JNI runner's Java side and the host CLI (javac, Java 17), and the
# JNI runner itself (g++ against the ExecuTorch headers and libraries in the venv's executorch
# wheel). With --tests also the JUnit tests (Debian's junit5 jars; scripts/setup_env.sh installs
# them). Prints the build folder on stdout.
set -euo pipefail
demo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
root="$(cd "$demo/.." && pwd)"
build="$demo/build"
tests=0
case "${1:-}" in
  --tests) tests=1 ;;
  -h|--help) sed -n '2,7p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
  "") ;;
  *) echo "build.sh: unknown argument '$1' (use --tests or nothing)" >&2; exit 2 ;;
esac

die() { echo "build.sh: $*" >&2; exit 1; }
command -v javac >/dev/null || die "javac not found: install a JDK 17 (scripts/setup_env.sh installs openjdk-17-jdk-headless)"
command -v g++ >/dev/null || die "g++ not found: install g++ (scripts/setup_env.sh does)"
java_home="$(dirname "$(dirname "$(readlink -f "$(command -v javac)")")")"
et=""
for candidate in "$root"/.venv/lib/python3*/site-packages/executorch; do
  [ -d "$candidate/include" ] && et="$candidate"
done
[ -n "$et" ] || die "no executorch wheel with C++ headers under $root/.venv (run scripts/setup_env.sh)"
junit_jars=/usr/share/java/junit-jupiter-api.jar:/usr/share/java/apiguardian-api.jar:/usr/share/java/opentest4j.jar:/usr/share/java/junit-platform-commons.jar
if [ "$tests" = 1 ]; then
  for jar in ${junit_jars//:/ } /usr/share/java/junit-platform-console-standalone.jar; do
    [ -f "$jar" ] || die "$jar is missing: install Debian's junit5 (scripts/setup_env.sh does)"
  done
fi

mkdir -p "$build"
exec 9>"$build/.lock"
flock 9
sources() { find "$demo/core/src/$1" "$demo/jni/src/$1" "$demo/host/src/$1" -type f \( -name '*.java' -o -name '*.cpp' -o -name '*.h' \) 2>/dev/null | sort; }
stamp_of() { { sources main; if [ "$1" = tests ]; then sources test; fi; echo "$0"; } | xargs sha256sum | { cat; echo "$et"; } | sha256sum | cut -d' ' -f1; }

want="$(stamp_of main)"
if [ ! -f "$build/main.stamp" ] || [ "$(cat "$build/main.stamp")" != "$want" ] || [ ! -f "$build/libmagicbokeh_jni.so" ]; then
  echo "[android_demo] compiling core, jni and host (javac --release 17)" >&2
  rm -rf "$build/classes" && mkdir -p "$build/classes"
  javac --release 17 -Xlint:all -Xlint:-serial -d "$build/classes" \
    $(find "$demo/core/src/main" "$demo/jni/src/main" "$demo/host/src/main" -name '*.java') >&2
  echo "[android_demo] compiling the JNI runner (g++ against $et)" >&2
  g++ -std=c++17 -O2 -fPIC -shared -Wall -Wno-deprecated-declarations -DC10_USING_CUSTOM_GENERATED_MACROS \
    -I"$et/include" -I"$et/include/executorch/runtime/core/portable_type/c10" \
    -I"$java_home/include" -I"$java_home/include/linux" \
    "$demo/jni/src/main/cpp/component_runner.cpp" "$demo/jni/src/main/cpp/jni_bridge.cpp" \
    -o "$build/libmagicbokeh_jni.so.tmp" \
    -L"$et/lib" -Wl,-rpath,"$et/lib" -lexecutorch \
    -Wl,--push-state,--no-as-needed -lexecutorch_kernels_optimized -lexecutorch_backend_xnnpack \
    -lexecutorch_threadpool -Wl,--pop-state >&2
  mv "$build/libmagicbokeh_jni.so.tmp" "$build/libmagicbokeh_jni.so"
  echo "$want" > "$build/main.stamp"
fi
if [ "$tests" = 1 ]; then
  want_tests="$(stamp_of tests)"
  if [ ! -f "$build/tests.stamp" ] || [ "$(cat "$build/tests.stamp")" != "$want_tests" ]; then
    echo "[android_demo] compiling the JUnit tests" >&2
    rm -rf "$build/test-classes" && mkdir -p "$build/test-classes"
    javac --release 17 -Xlint:all -Xlint:-serial -d "$build/test-classes" -cp "$build/classes:$junit_jars" \
      $(find "$demo/core/src/test" "$demo/jni/src/test" -name '*.java') >&2
    echo "$want_tests" > "$build/tests.stamp"
  fi
fi
echo "$build"
