"""What every command shares: flags defined when it starts (never at import, so any number of
command modules can be imported in one process), the tcmalloc re-exec, a quiet console and
one-line errors.

Console: the command's own lines (progress, evaluation, samples, results), warnings and
errors. Library INFO logging (Orbax, TFDS, absl) goes to WORKDIR/log.txt once a training run
has started (`log_to_file`); `--verbosity=0` given explicitly brings it back to the console.
C++ INFO logs of XLA are hidden (common/__init__.py) unless TF_CPP_MIN_LOG_LEVEL is set.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Callable, Iterator

from absl import app, flags
from absl import logging as absl_logging

from common import allocator


LOG_FILE = "log.txt"
# Bad input: one line and exit status 2 (a traceback is for bugs, not for a wrong flag).
USER_ERRORS = (ValueError, OSError, FloatingPointError)


def exit_on_error(fn: Callable) -> Callable:
  """Runs `fn`; bad input becomes one clear `error:` line on stderr and exit status 2
  (FLAX_PRETRAIN_TRACEBACK=1 shows the traceback instead)."""
  def run(*args, **kwargs):
    try:
      return fn(*args, **kwargs)
    except USER_ERRORS as e:
      if os.environ.get("FLAX_PRETRAIN_TRACEBACK"):
        raise
      print(f"error: {' '.join(str(e).split())}", file=sys.stderr, flush=True)
      sys.exit(2)
  return run


def quiet_console() -> None:
  """No library logging on the console unless --verbosity was given explicitly: the commands
  print their own progress, warnings and one-line errors; libraries' records (Orbax's
  tracebacks of a failed background save, TFDS notes) go to WORKDIR/log.txt."""
  verbose = "verbosity" in flags.FLAGS and flags.FLAGS["verbosity"].present
  absl_logging.get_absl_handler().setLevel(logging.DEBUG if verbose else logging.CRITICAL)
  logging.getLogger().setLevel(logging.INFO)


class _QuietFileHandler(logging.FileHandler):
  """A log file that fails quietly (a full disk must not print logging's own tracebacks)."""

  def handleError(self, record: logging.LogRecord) -> None:
    del record


@contextlib.contextmanager
def log_to_file(workdir: str) -> Iterator[str]:
  """Library logging (INFO and up) also goes to WORKDIR/log.txt while the context is open."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOG_FILE)
  handler = _QuietFileHandler(path)
  handler.setLevel(logging.INFO)
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
  root = logging.getLogger()
  root.addHandler(handler)
  try:
    yield path
  finally:
    root.removeHandler(handler)
    handler.close()


def _drop_closed_loop_callbacks() -> None:
  """TensorStore completes writes that outlive a failed Orbax save by scheduling a callback
  on Orbax's event loop, already closed; Python reports each refusal as an unraisable
  exception (a bare traceback). They are logged (log.txt), not printed: the save's own error
  is the one line the user needs."""
  default = sys.unraisablehook

  def hook(unraisable) -> None:
    value = unraisable.exc_value
    if isinstance(value, RuntimeError) and str(value) == "Event loop is closed":
      logging.info("dropped after a failed save: RuntimeError: Event loop is closed")
      return
    default(unraisable)
  sys.unraisablehook = hook


def _no_positional(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments {argv[1:]}")


def run(main: Callable[[], None], define_flags: Callable[[], None] | None = None,
        *, argv_check: Callable[[list[str]], None] | None = None) -> None:
  """A command's `cli()`: re-exec under tcmalloc, define flags, check argv (e.g. config keys)
  before absl parses it, refuse positional arguments, then run `main()` with a quiet console
  and one-line errors."""
  allocator.reexec_with_tcmalloc()
  if define_flags is not None:
    define_flags()
  if argv_check is not None:
    exit_on_error(argv_check)(sys.argv)

  def _main(argv: list[str]) -> None:
    quiet_console()
    _drop_closed_loop_callbacks()
    exit_on_error(_no_positional)(argv)
    exit_on_error(main)()

  app.run(_main, flags_parser=_parse_flags)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a bad flag (unknown, malformed value) as one `error:` line."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    print(f"error: {' '.join(str(e).split())} (--helpfull lists the flags)", file=sys.stderr,
          flush=True)
    sys.exit(2)
