"""Each JUnit test of the Android demo (android_demo/core and android_demo/jni) as one pytest test,
so that CI's count includes them. The JUnit suite runs once (conftest.junit_run); the test list
comes from the @Test methods in the sources, so a test that JUnit never ran fails here."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DEMO = Path(__file__).resolve().parents[2] / "android_demo"
TEST_METHOD = re.compile(r"@Test\s+(?:public\s+)?void\s+(\w+)\s*\(")


def junit_tests() -> list[str]:
    names = []
    for source in sorted(DEMO.glob("*/src/test/java/**/*Test.java")):
        names += [f"{source.stem}.{method}" for method in TEST_METHOD.findall(source.read_text())]
    return names


def test_the_sources_hold_junit_tests():
    assert len(junit_tests()) >= 20


@pytest.mark.parametrize("name", junit_tests())
def test_junit(name: str, junit_run) -> None:
    if name not in junit_run.results:
        pytest.fail(f"JUnit did not run {name} (build or launcher failure?):\n{junit_run.output}")
    outcome, message = junit_run.results[name]
    assert outcome == "passed", f"{name} {outcome}: {message}"
