"""The iOS demo's Swift package (ios_demo/), built and tested by ``swift build`` / ``swift test``.

One module-scoped run: goldens for five renders (tiny and default configs: mask and tap focus,
an image smaller than a tile, sizes that are and are not multiples of the stride, K at 1 and 32)
are written with ``python -m runtime_py golden``, and an artifacts folder with
``runtime_py.manifest``; then the package is built and ``swift test`` runs once with their paths
in the environment. Each Swift test case is one pytest test here (listed from the Swift sources,
so a case that did not run fails instead of vanishing), and no case may be skipped.

The command line is checked on a photo none of the Swift tests use: ``swift run magicbokeh-cli
--replay GOLDEN --out O.png`` must land within one grey level of the golden's final image at
>= 99.9 % of values, and bad input must be a one-line error. Core ML / SwiftUI code cannot be
compiled off Apple systems; ``swiftc -parse`` at least catches syntax errors in it.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest

from tests.ios_demo.swift_harness import (
    PACKAGE,
    SWIFT,
    SWIFTC,
    parse_results,
    run,
    run_golden_command,
    swift_test_cases,
    write_artifacts_fixture,
    write_depth_host_fixture,
    write_goldens,
    write_inputs,
)

# A developer's machine without Swift skips the package's tests with this reason; CI (CI=true) never
# does: there a missing toolchain fails the run instead of shrinking it silently.
pytestmark = pytest.mark.skipif(SWIFT is None and not os.environ.get("CI"),
                                reason="no Swift toolchain on PATH (`swift --version`); the iOS demo needs Swift 6")


def test_swift_toolchain_is_present():
    assert SWIFT is not None and SWIFTC is not None, "no swift / swiftc on PATH or in /opt/swift/usr/bin"

SWIFT_CASES = swift_test_cases()


@pytest.fixture(scope="module")
def swift_build_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[subprocess.Popen, Path]]:
    """``swift build --build-tests`` (debug: the fastest to compile) of the library, the command
    line and the tests, started in the background so that it compiles while the fixtures are written."""
    log = tmp_path_factory.mktemp("swift_build") / "build.log"
    with open(log, "w") as sink:
        process = subprocess.Popen([SWIFT, "build", "--build-tests"], cwd=PACKAGE, stdout=sink, stderr=subprocess.STDOUT)
    yield process, log
    if process.poll() is None:  # a failure elsewhere: do not leave the compiler running
        process.kill()
        process.wait()


@pytest.fixture(scope="module")
def swift_fixtures(swift_build_process: tuple[subprocess.Popen, Path], tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Goldens and the artifacts fixture (written while the build runs)."""
    root = tmp_path_factory.mktemp("swift_fixtures")
    write_goldens(root / "goldens", root / "inputs")
    write_artifacts_fixture(root / "artifacts")
    write_depth_host_fixture(root / "depth_host")
    return {"MAGICBOKEH_GOLDENS": str(root / "goldens"), "MAGICBOKEH_ARTIFACTS_FIXTURE": str(root / "artifacts"),
            "MAGICBOKEH_DEPTH_HOST_FIXTURE": str(root / "depth_host")}


@pytest.fixture(scope="module")
def swift_build(swift_build_process: tuple[subprocess.Popen, Path], swift_fixtures: dict[str, str]) -> None:
    """The background build, finished and successful."""
    process, log = swift_build_process
    code = process.wait(timeout=900)
    assert code == 0, f"swift build --build-tests failed:\n{log.read_text()[-8000:]}"


@pytest.fixture(scope="module")
def swift_test_run(swift_build: None, swift_fixtures: dict[str, str]) -> tuple[dict[str, str], str]:
    """One ``swift test`` run: (case -> passed / failed / skipped, the full output)."""
    done = run([SWIFT, "test", "--skip-build"], env=swift_fixtures)
    output = done.stdout + "\n" + done.stderr
    results = parse_results(output)
    if not results:
        pytest.fail(f"swift test reported no test cases (exit {done.returncode}):\n{output[-8000:]}")
    return results, output


@pytest.mark.parametrize("case", SWIFT_CASES)
def test_swift(case: str, swift_test_run: tuple[dict[str, str], str]) -> None:
    results, output = swift_test_run
    outcome = results.get(case)
    if outcome != "passed":
        lines = [line for line in output.splitlines() if case.split(".")[1] in line or "error" in line.lower()]
        pytest.fail(f"Swift test {case}: {outcome or 'did not run'}\n" + "\n".join(lines[-40:]))


def test_swift_run_ran_exactly_the_listed_cases(swift_test_run: tuple[dict[str, str], str]) -> None:
    """No skips (the golden-dependent cases skip without the fixtures), nothing unlisted."""
    results, _ = swift_test_run
    skipped = sorted(case for case, outcome in results.items() if outcome == "skipped")
    assert not skipped, f"Swift cases skipped: {skipped}"
    assert sorted(results) == sorted(SWIFT_CASES), (
        f"ran but not listed: {sorted(set(results) - set(SWIFT_CASES))}; "
        f"listed but not run: {sorted(set(SWIFT_CASES) - set(results))}")


# The command-line tests depend on swift_build, whose ``swift build --build-tests`` built every
# product, magicbokeh-cli included; ``swift run --skip-build`` runs that binary without SwiftPM
# planning and checking the whole package again on each of the five calls.


@pytest.fixture(scope="module")
def unseen_golden(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A golden of the default model on a synthetic street scene (not a Swift test input):
    cropped to 300 x 560, so it is padded to one tile's height and needs a right-flush tile."""
    from runtime_py.scenes import generate_scene

    root = tmp_path_factory.mktemp("unseen")
    scene = generate_scene(11, size=560, family="street")
    image = scene.degraded
    if image.dtype != np.uint8:
        image = (np.clip(image, 0, 1) * 255).astype(np.uint8)
    image = np.ascontiguousarray(image[130:430])
    depth = np.ascontiguousarray(scene.depth[130:430].astype(np.float32))
    mask = np.ascontiguousarray((scene.mask[130:430] > 0).astype(np.uint8) * 255)
    if not mask.any():  # the subject lies outside the crop: focus on the nearest third instead
        mask = (depth > np.quantile(depth, 0.66)).astype(np.uint8) * 255
    args = write_inputs(root / "inputs", image, depth, mask)
    run_golden_command([*args, "--K", "20", "--out", str(root / "golden")])
    return root / "golden"


def test_cli_replay_matches_the_reference_on_an_unseen_photo(swift_build: None, unseen_golden: Path, tmp_path: Path) -> None:
    from PIL import Image

    from runtime_py.golden import read_golden

    out = tmp_path / "replay.png"
    done = run([SWIFT, "run", "--skip-build", "magicbokeh-cli", "--replay", str(unseen_golden), "--out", str(out)])
    assert done.returncode == 0, done.stdout + done.stderr
    index, arrays = read_golden(unseen_golden)
    with Image.open(out) as png:  # PIL checks the chunk CRCs and the zlib stream
        ours = np.asarray(png.convert("RGB"))
        label = png.text.get("magicbokeh:model", "")
    reference = arrays["final_u8"]
    assert ours.shape == reference.shape
    difference = np.abs(ours.astype(int) - reference.astype(int))
    identical = float((difference == 0).mean())
    print(f"replay of {index['input']['height']}x{index['input']['width']} ({len(index['tiles'])} tiles, config "
          f"{index['config']['name']}): max |diff| {difference.max()}, identical {identical * 100:.4f} %")
    assert difference.max() <= index["tolerances"]["final_u8"]["max_abs"]
    assert identical >= index["tolerances"]["final_u8"]["min_identical_fraction"]
    assert "agreement with the golden final image" in done.stdout
    assert index["model"]["label"]["description"] in label, "the model label is not in the PNG metadata"


@pytest.mark.parametrize("arguments,message", [
    (["--replay", "/nonexistent/golden", "--out", "o.png"], "has no golden.json"),
    (["--replay", "GOLDEN"], "--replay needs --out"),
    (["--artifacts", "/tmp", "--image", "x.png"], "Core ML exists only on Apple systems"),
    (["--bogus"], "unknown argument '--bogus'"),
])
def test_cli_bad_input_is_a_one_line_error(swift_build: None, swift_fixtures: dict[str, str], tmp_path: Path,
                                           arguments: list[str], message: str) -> None:
    golden = Path(swift_fixtures["MAGICBOKEH_GOLDENS"]) / "tiny_point_k1"
    arguments = [str(golden) if a == "GOLDEN" else a for a in arguments]
    done = run([SWIFT, "run", "--skip-build", "magicbokeh-cli", *arguments])
    assert done.returncode != 0
    errors = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], done.stderr
    assert "Fatal error" not in done.stderr and "Stack dump" not in done.stderr


def test_apple_only_sources_parse() -> None:
    """Core ML and SwiftUI code compiles only on Apple systems; its syntax is checked here."""
    sources = sorted((PACKAGE / "Sources" / "MagicBokehKit" / "CoreML").glob("*.swift")) + sorted((PACKAGE / "App").glob("*.swift"))
    assert len(sources) >= 4, sources
    done = run([SWIFTC or "swiftc", "-parse", *map(str, sources)])
    assert done.returncode == 0, done.stdout + done.stderr
    text = "".join(p.read_text() for p in sources if "CoreML" in str(p.parent))
    assert "#if canImport(CoreML)" in text
