"""Light child-process targets for the benchmark tests (import nothing heavy, so spawning is quick)."""

import time


def sleep(seconds: float) -> None:
    time.sleep(seconds)
