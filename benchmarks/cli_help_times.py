"""Time every command line's ``--help``: ``python benchmarks/cli_help_times.py [--repeats N]``.

Each command starts in a fresh process, as a user's would, ``--repeats`` times; the table gives the
median and the fastest wall-clock time, the median CPU time (user + system of the process and its
children: what the command costs, nearly independent of other load on the machine), the exit status
and how many bytes came on stderr (a quiet ``--help`` writes none). It is a measurement to read, not a
test: wall-clock figures depend on the machine and its load. The commands are found, not listed by hand: every Python script of the toolkit's
folders with a ``__main__`` block, ``python -m runtime_py`` and each of its commands, and the Android
demo's host scripts (``render.sh`` checks its build first, which is part of what a user waits for).
``scripts/*.sh`` are left out: they install (setup_env.sh) or run whole jobs.
"""

from __future__ import annotations

import argparse
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

if __package__ in (None, ""):  # run as a script: make the repository importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

REPO = Path(__file__).resolve().parent.parent
#: Folders whose ``__main__`` scripts are command lines of the toolkit.
SCRIPT_FOLDERS = ("runtime_py", "export", "quantize", "benchmarks", "training", "scripts")
HOST_SCRIPTS = "android_demo/host"


@dataclass(frozen=True)
class HelpTiming:
    command: tuple[str, ...]
    seconds: list[float]
    cpu_seconds: list[float]
    returncode: int
    stderr_bytes: int

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def help_commands() -> list[tuple[str, ...]]:
    """Every command line's ``--help`` invocation, relative to the repository root."""
    from runtime_py.cli import build_parser

    py = sys.executable
    commands: list[tuple[str, ...]] = [(py, "-m", "runtime_py", "--help")]
    subparsers = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    commands += [(py, "-m", "runtime_py", name, "--help") for name in subparsers.choices]
    this = Path(__file__).resolve()
    for folder in SCRIPT_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            if path.resolve() == this or path.name == "__main__.py":
                continue
            text = path.read_text(encoding="utf-8", errors="replace")
            if 'if __name__ == "__main__":' in text or "if __name__ == '__main__':" in text:
                commands.append((py, str(path.relative_to(REPO)), "--help"))
    commands += [("bash", str(p.relative_to(REPO)), "--help") for p in sorted((REPO / HOST_SCRIPTS).glob("*.sh"))]
    return commands


def time_help(command: Sequence[str], repeats: int, timeout: float) -> HelpTiming:
    """Run ``command`` ``repeats`` times from the repository root; wall-clock and CPU seconds of each run."""
    seconds, cpu, code, err = [], [], 0, 0
    for _ in range(repeats):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        start = time.perf_counter()
        try:
            proc = subprocess.run(list(command), cwd=REPO, capture_output=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            seconds.append(timeout)
            code = -1
            break
        seconds.append(time.perf_counter() - start)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)  # the finished (waited-for) processes only
        cpu.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
        code, err = proc.returncode, max(err, len(proc.stderr))
    return HelpTiming(tuple(command), seconds, cpu or [float("nan")], code, err)


def format_table(timings: Sequence[HelpTiming]) -> str:
    def shown(command: tuple[str, ...]) -> str:
        return " ".join("python" if part == sys.executable else part for part in command)

    rows = [("command", "median s", "min s", "cpu s", "exit", "stderr bytes")]
    rows += [(shown(t.command), f"{t.median:.2f}", f"{min(t.seconds):.2f}", f"{statistics.median(t.cpu_seconds):.2f}",
              str(t.returncode), str(t.stderr_bytes)) for t in timings]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
             for row in rows]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python benchmarks/cli_help_times.py",
                                     description=__doc__.split("\n\n")[0],
                                     epilog=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3, help="fresh processes per command (default 3)")
    parser.add_argument("--timeout", type=float, default=300.0,
                        help="seconds one --help may take before it counts as hung (default 300; render.sh may "
                             "compile the Java and JNI parts on its first run)")
    parser.add_argument("--match", default=None, metavar="TEXT", help="time only the commands that contain TEXT")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Print the table; exit status 1 when a ``--help`` failed or wrote on stderr."""
    args = build_parser().parse_args(argv)
    if args.repeats < 1:
        build_parser().error(f"--repeats must be >= 1, got {args.repeats}")
    commands = [c for c in help_commands() if args.match is None or args.match in " ".join(c)]
    timings = []
    for command in commands:
        timings.append(time_help(command, args.repeats, args.timeout))
        print(f"  {' '.join(command[1:])}: {timings[-1].median:.2f} s "
              f"({statistics.median(timings[-1].cpu_seconds):.2f} s CPU)", file=sys.stderr, flush=True)
    print(format_table(timings))
    return 1 if any(t.returncode != 0 or t.stderr_bytes for t in timings) else 0


if __name__ == "__main__":
    raise SystemExit(main())
