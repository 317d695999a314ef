"""examples/*.py run in the test process, as their command line runs them: the same exit code, stdout and stderr
(warnings included) as a process of their own, without paying the seconds of imports each process costs.

The process-level behaviour itself (console output, exit codes, signals, other processes) keeps its subprocess tests:
the smoke run and the two-process run in test_train.py, the refusals in test_command_line.py.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import logging
import subprocess
import sys
import warnings
from collections.abc import Iterator
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLES = REPO / "examples"


def example(name: str):
    """The module examples/`name`.py (imported once, as `import name` there would)."""
    if str(EXAMPLES) not in sys.path:
        sys.path.insert(0, str(EXAMPLES))
    return importlib.import_module(name)


@contextlib.contextmanager
def as_a_process() -> Iterator[None]:
    """Leaves no Accelerate state, root log handler or log level behind, as a process of its own would."""
    from accelerate.state import AcceleratorState

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        yield
    finally:
        AcceleratorState._reset_state(reset_partial_state=True)
        for handler in set(root.handlers) - set(handlers):
            handler.close()
        root.handlers[:], root.level = handlers, level


def _show_on_stderr(message, category, filename, lineno, file=None, line=None) -> None:
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def run_example(script: str, *args) -> subprocess.CompletedProcess:
    """`python examples/<script> *args`, in this process: its exit code (`run_command_line`'s, or a `SystemExit`'s),
    and what it wrote to stdout and stderr, warnings shown on stderr as Python shows them by default."""
    module = example(Path(script).stem)
    argv = [str(arg) for arg in args]
    out, err = io.StringIO(), io.StringIO()
    with as_a_process(), contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        with warnings.catch_warnings():  # shown, not recorded by pytest: a process prints them on stderr
            warnings.resetwarnings()  # Python's default filters
            for category in (DeprecationWarning, PendingDeprecationWarning, ImportWarning, ResourceWarning):
                warnings.simplefilter("ignore", category)
            warnings.showwarning = _show_on_stderr
            try:
                code = module.run_command_line(argv)
            except SystemExit as error:
                code = error.code if isinstance(error.code, int) else (0 if error.code is None else 1)
    return subprocess.CompletedProcess([script, *argv], code, out.getvalue(), err.getvalue())
