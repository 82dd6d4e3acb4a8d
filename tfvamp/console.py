"""A quiet, informative console for the command-line scripts.

    from tfvamp import console
    console.quiet()          # first thing in a script, before TensorFlow is imported

TensorFlow prints start-up lines that ask nothing of the user (no CUDA driver on a CPU machine,
the oneDNN notice, the CPU-feature guard, a tf.data rendezvous note, a function-wrapper rename
during export). `quiet()` keeps them off the console: TensorFlow's C++ log level is set to
warnings-and-up before it loads, the C++ lines known to be noise are dropped from the process's
stderr, and TensorFlow's and TFDS's Python INFO messages are off. Every other line, warnings and
errors a user must act on among them, goes through unchanged.

`fail(message)` prints a one-paragraph error (no traceback) and returns the exit status.
"""
import atexit
import logging
import os
import re
import sys
import threading

# C++ log lines (timestamp, level letter, source) that are noise for a user, and the extra
# lines some of them continue on.
_NOISE = re.compile(
    r"failed call to cuInit|Could not find cuda drivers|Unable to register cu(DNN|FFT|BLAS) factory|"
    r"computation placer already registered|TF-TRT Warning|oneDNN custom operations are on|"
    r"cpu_feature_guard|rebuild TensorFlow with the appropriate compiler flags|"
    r"This TensorFlow binary is optimized|Local rendezvous is aborting|oneDNN supports DT_INT32 only|"
    r"All log messages before absl::InitializeLog|absl::InitializeLog\(\) is called|"
    r"Unable to register cuda|cudart_stub|GPU will not be used")
_PYTHON_NOISE = re.compile(r"contains input name\(s\)|will be renamed|Assets written to|"
                           r"Found untraced functions|does not have a registered")
_installed = []


def quiet():
    """Silences TensorFlow's start-up noise for this process (idempotent). Call before
    TensorFlow is imported, so that its C++ log level applies."""
    if _installed:
        return
    _installed.append(True)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    _filter_stderr()
    for name in ("tensorflow", "absl", "tensorflow_datasets"):
        logger = logging.getLogger(name)
        logger.addFilter(_drop_python_noise)
    try:
        from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
        absl_logging.set_verbosity(absl_logging.WARNING)
    except ImportError:
        pass


def _drop_python_noise(record):
    return not _PYTHON_NOISE.search(record.getMessage())


def _filter_stderr():
    """Routes file descriptor 2 through a thread that drops the noise lines. C++ logging
    writes to the descriptor directly, so filtering `sys.stderr` alone would miss it."""
    try:
        original = os.dup(2)
        read_end, write_end = os.pipe()
        os.dup2(write_end, 2)
        os.close(write_end)
    except OSError:  # no usable descriptor 2 (an embedded interpreter): leave it alone
        return
    sys.stderr = os.fdopen(2, "w", buffering=1, closefd=False)
    thread = threading.Thread(target=_pump, args=(read_end, original), daemon=True, name="tfvamp-stderr")
    thread.start()

    def restore():
        # The real stderr back on descriptor 2 closes the pipe's last writer: the thread
        # sees the end, writes what it holds, and stops.
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(original, 2)
        thread.join(timeout=2.0)

    atexit.register(restore)


def _pump(read_end, original):
    """Copies the pipe to the real stderr, line by line, minus the noise. Partial lines that
    carry a carriage return (progress bars) go through at once."""
    pending = b""
    while True:
        try:
            chunk = os.read(read_end, 65536)
        except OSError:
            return
        if not chunk:
            if pending:
                os.write(original, pending)
            return
        pending += chunk
        *lines, pending = pending.split(b"\n")
        out = b"".join(line + b"\n" for line in lines if not _NOISE.search(line.decode(errors="replace")))
        if b"\r" in pending:
            out, pending = out + pending, b""
        if out:
            os.write(original, out)


def fail(message, status=1):
    """Prints `message` as a one-paragraph error on stderr; returns `status` for `sys.exit`."""
    print(f"error: {message}", file=sys.stderr, flush=True)
    return status


FLAG_HINT = "Run with --helpshort for this script's flags."
