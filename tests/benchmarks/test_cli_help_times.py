"""benchmarks/cli_help_times.py finds every command line and times its --help (the figures are
printed, never asserted: they depend on the machine's load)."""

from __future__ import annotations

import sys

from benchmarks.cli_help_times import format_table, help_commands, main, time_help


def test_every_command_line_is_found() -> None:
    shown = {" ".join(c[1:]) for c in help_commands()}
    expected = {"-m runtime_py --help", "-m runtime_py render --help", "-m runtime_py parity --help",
                "export/to_executorch.py --help", "export/to_coreml.py --help", "export/to_qnn.py --help",
                "export/run_all.py --help", "benchmarks/run.py --help", "android_demo/host/render.sh --help"}
    assert expected <= shown, expected - shown
    assert not any("cli_help_times" in s for s in shown)  # it does not time itself


def test_one_help_is_timed_and_tabulated() -> None:
    timing = time_help((sys.executable, "-m", "runtime_py", "--help"), repeats=2, timeout=120)
    assert timing.returncode == 0 and timing.stderr_bytes == 0 and len(timing.seconds) == 2
    assert len(timing.cpu_seconds) == 2 and all(c > 0 for c in timing.cpu_seconds)  # an interpreter start costs CPU
    table = format_table([timing]).splitlines()
    assert table[0].split()[:3] == ["command", "median", "s"] and table[2].startswith("python -m runtime_py --help")
    print(format_table([timing]))


def test_match_picks_commands(capsys) -> None:
    assert main(["--repeats", "1", "--match", "export/to_qnn.py"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and out[2].startswith("python export/to_qnn.py --help")


def test_benchmark_and_experiment_help_import_no_torch() -> None:
    """The two --help that measured minutes on a loaded host imported torch before parsing; now neither does."""
    import subprocess
    from pathlib import Path

    repo = Path(__file__).resolve().parents[2]
    script = ("import runpy, sys, contextlib, io\n"
              "for path in ('benchmarks/run.py', 'scripts/experiments/vae_learning_curve.py'):\n"
              "    sys.argv = [path, '--help']\n"
              "    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):\n"
              "        runpy.run_path(path, run_name='__main__')\n"
              "print('torch' in sys.modules)\n")
    proc = subprocess.run([sys.executable, "-c", script], cwd=repo, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "False"
