"""Keep TensorFlow's C++ start-up chatter off the terminal; keep everything else.

TensorFlow 2.21 logs through absl from C++ before Python can configure it:
oneDNN and CPU-feature notices, "could not find cuda drivers", a cuInit
*error* on every machine without a GPU, and the converter's settings dump.
TF_CPP_MIN_LOG_LEVEL no longer silences all of it, and none of it is
something a user can act on. So the `noodle` command passes its own stderr
(file descriptor 2, which the C++ side writes to directly) through a filter
that drops exactly those lines. Our own messages, Python warnings and any
other TensorFlow warning or error still show. `noodle -v` (or NOODLE_VERBOSE=1)
turns the filter off.

noodle's own progress lines are logged by the library code, each module to
`logging.getLogger(__name__)`; a command shows them with `show_progress`, one
line each on stdout (warnings as `warning: ...`), DEBUG lines too with -v.
Called as a library, noodle prints nothing but warnings (Python's last resort).
"""
from __future__ import annotations

import atexit
import logging
import os
import re
import sys
import threading

VERBOSE_ENV = "NOODLE_VERBOSE"
# TensorFlow's own C++ threshold, for every process that may load it: 2 keeps
# its errors and drops its INFO and WARNING lines (what it prints before the
# threshold applies, NOISE below drops). A level the user set is kept.
TF_LOG_LEVEL = "2"

# What is dropped, and why each is noise:
NOISE = re.compile(
    "|".join([
        # absl INFO lines (I1125 12:00:00.000000 123 port.cc:153] ...): notices, never problems.
        r"^I\d{4} [\d:.]+\s+\d+ \S+:\d+\] ",
        # The one absl ERROR every GPU-less machine gets: the CUDA driver probe failing.
        r"^E\d{4} [\d:.]+\s+\d+ \S+:\d+\] failed call to cuInit",
        r"^WARNING: All log messages before absl::InitializeLog\(\) is called",
        # The continuation of cpu_feature_guard's notice.
        r"^To enable the following instructions: .* rebuild TensorFlow",
        # The converter noting options that TFLite conversion always ignores.
        r"^W\d{4} [\d:.]+\s+\d+ \S+:\d+\] Ignored (output_format|drop_control_dependency)\.?$",
        # The converter's settings dump, printed by its C++ quantizer.
        r"^fully_quantize: \d+, inference_type: ",
        # The interpreter's note that XNNPACK is on, once per model validation loads.
        r"^INFO: Created TensorFlow Lite XNNPACK delegate for CPU",
    ])
)


def quiet_tensorflow(env=None):
    """`env` (default: this process's own) with TF_CPP_MIN_LOG_LEVEL set, unless it was."""
    env = os.environ if env is None else env
    env.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_LOG_LEVEL)
    return env


# The packages whose loggers a command shows.
PACKAGES = ("train", "export", "bench")


class _Lines(logging.Handler):
    """One line a record on the stdout of the moment (a test runner swaps it), as typer.echo wrote them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level = record.levelno
            prefix = "error: " if level > logging.WARNING else "warning: " if level == logging.WARNING else ""
            print(prefix + record.getMessage(), file=sys.stdout, flush=True)
        except Exception:  # a closed stdout must not stop the work it reports on
            self.handleError(record)


def show_progress(verbose: bool | None = None) -> None:
    """Show the PACKAGES' progress lines for this process's commands: INFO, and DEBUG when verbose.

    verbose None: as `noodle -v` (NOODLE_VERBOSE) says.
    """
    verbose = not enabled() if verbose is None else verbose
    for name in PACKAGES:
        logger = logging.getLogger(name)
        if not any(isinstance(h, _Lines) for h in logger.handlers):
            logger.addHandler(_Lines())
        logger.setLevel(logging.DEBUG if verbose else logging.INFO)
        # Ours alone: a library that configured the root logger (a bare logging.info
        # in TensorFlow's import path does) would print every line a second time.
        logger.propagate = False


def enabled() -> bool:
    return os.environ.get(VERBOSE_ENV, "") in ("", "0")


def filter_stderr() -> None:
    """Route fd 2 through a thread that drops NOISE lines; undone at exit."""
    try:
        original = os.dup(2)  # restored at exit
        target = os.dup(2)  # the pump's own copy, closed when it ends
        read_end, write_end = os.pipe()
    except OSError:
        return
    sys.stderr.flush()
    os.dup2(write_end, 2)
    os.close(write_end)

    def pump() -> None:
        with os.fdopen(read_end, "rb") as pipe, os.fdopen(target, "wb", buffering=0) as out:
            for line in pipe:
                if not NOISE.search(line.decode(errors="replace")):
                    out.write(line)

    thread = threading.Thread(target=pump, name="noodle-stderr", daemon=True)
    thread.start()

    def restore() -> None:
        # Putting the real stderr back closes the pipe's last write end, so the
        # pump passes on what is left and stops; later writes go straight out.
        sys.stderr.flush()
        os.dup2(original, 2)
        os.close(original)
        thread.join(timeout=5)

    atexit.register(restore)
