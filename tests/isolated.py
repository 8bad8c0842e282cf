"""Run a snippet in a fresh interpreter, so that a crash (a signal) or a hang is seen as such.

Hostile-input tests use this: a segfault inside TVM would otherwise kill pytest itself, and a
compile that never ends would stall the whole run. ``run_isolated`` returns the finished
process; ``assert_refused`` checks that the snippet ended with a clean, named refusal.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import textwrap
from dataclasses import dataclass

#: Seconds a hostile case may take before it counts as a hang (compilation included).
DEFAULT_TIMEOUT = 120


@dataclass(frozen=True)
class Outcome:
    returncode: int | None  # None: killed at the timeout (a hang)
    stdout: str
    stderr: str

    @property
    def signal(self) -> str | None:
        """The signal that killed the process (SIGSEGV, SIGBUS, ...), if one did."""
        if self.returncode is not None and self.returncode < 0:
            return signal.Signals(-self.returncode).name
        return None

    def describe(self) -> str:
        how = (
            "hung (timeout)"
            if self.returncode is None
            else self.signal or f"exited {self.returncode}"
        )
        return (
            f"{how}\n--- stdout ---\n{self.stdout[-3000:]}\n--- stderr ---\n{self.stderr[-3000:]}"
        )


def run_isolated(
    code: str, *, timeout: float = DEFAULT_TIMEOUT, args: list[str] | None = None
) -> Outcome:
    """Run ``code`` (dedented Python) in a new interpreter; ``args`` become ``sys.argv[1:]``."""
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    try:
        proc = subprocess.run(
            [sys.executable, "-c", textwrap.dedent(code), *(args or [])],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
        )
    except subprocess.TimeoutExpired as err:
        out = err.stdout.decode() if isinstance(err.stdout, bytes) else err.stdout or ""
        errs = err.stderr.decode() if isinstance(err.stderr, bytes) else err.stderr or ""
        return Outcome(None, out, errs)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def run_cli(argv: list[str], *, timeout: float = DEFAULT_TIMEOUT) -> Outcome:
    """``convforge ARGV`` in a new interpreter (exit code, stdout, stderr)."""
    return run_isolated(
        "import sys; from convforge.cli import main; sys.exit(main(sys.argv[1:]))",
        timeout=timeout,
        args=argv,
    )


#: Printed by ``refusal_snippet`` when the call raised the expected exception.
REFUSED = "REFUSED:"


def refusal_snippet(setup: str, call: str, exceptions: str = "ValueError, TypeError") -> str:
    """A snippet that runs ``setup``, then ``call``, and prints the refusal's message."""
    return (
        textwrap.dedent(setup)
        + "\n"
        + textwrap.dedent(f"""
        try:
            {call}
        except ({exceptions}) as err:
            print({REFUSED!r}, type(err).__name__, str(err).replace(chr(10), ' '))
        else:
            print('NOT REFUSED')
        """)
    )


def assert_refused(outcome: Outcome, *patterns: str) -> str:
    """The process exited 0 after a clean refusal whose message matches every pattern."""
    assert outcome.returncode == 0, outcome.describe()
    lines = [line for line in outcome.stdout.splitlines() if line.startswith(REFUSED)]
    assert lines, outcome.describe()
    message = lines[-1]
    for pattern in patterns:
        assert re.search(pattern, message), f"{pattern!r} not in {message!r}"
    return message
