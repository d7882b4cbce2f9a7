"""Host allocator: re-run the command under tcmalloc when the system has it.

XLA:CPU allocates every step's temporary buffers afresh. glibc serves blocks over 32 MB with
mmap and returns them on free, so each training step page-faults its whole working set in
again (the measured cost: docs/benchmarks.md, "What closed the gaps"). tcmalloc keeps freed
memory mapped (PyTorch is unaffected either way, it reuses blocks under the mmap threshold).
This is the allocator TensorFlow and many JAX deployments preload; `quickstart.sh` installs it
(`apt-get install libtcmalloc-minimal4`). Nothing changes when it is absent.

Opt out with FLAX_PRETRAIN_TCMALLOC=0; point FLAX_PRETRAIN_TCMALLOC at another library path to
use it instead.
"""

from __future__ import annotations

import os
import sys

ENV = "FLAX_PRETRAIN_TCMALLOC"
SEARCH = ("/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
          "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
          "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
          "/usr/lib/aarch64-linux-gnu/libtcmalloc.so.4",
          "/usr/lib64/libtcmalloc_minimal.so.4")


def find_library(environ: dict[str, str] | None = None) -> str | None:
  """The allocator to preload: $FLAX_PRETRAIN_TCMALLOC if it names a file, else the first
  system tcmalloc found; None when opted out or none is installed."""
  environ = os.environ if environ is None else environ
  choice = environ.get(ENV, "")
  if choice in ("0", "false", "no", "off"):
    return None
  if choice:
    if not os.path.isfile(choice):
      raise ValueError(f"{ENV}={choice!r}: no such file (set it to a tcmalloc library path, "
                       "or 0 to use the system allocator)")
    return choice
  return next((p for p in SEARCH if os.path.isfile(p)), None)


def preload_env(environ: dict[str, str] | None = None) -> dict[str, str] | None:
  """The environment to re-run this command with, or None when nothing is to be done (opted
  out, no library, or already preloaded: which also stops a re-exec loop)."""
  environ = dict(os.environ if environ is None else environ)
  lib = find_library(environ)
  preloaded = environ.get("LD_PRELOAD", "")
  if lib is None or lib in preloaded.split(":") or "tcmalloc" in preloaded:
    return None
  environ["LD_PRELOAD"] = f"{lib}:{preloaded}" if preloaded else lib
  return environ


def reexec_with_tcmalloc() -> None:
  """Replaces this process by the same command with tcmalloc preloaded (see module doc).

  Call it first thing in a command's main, before any work: the process is restarted. A
  no-op inside an interactive interpreter or when `preload_env` says so.
  """
  try:
    env = preload_env()
  except ValueError as e:  # a bad FLAX_PRETRAIN_TCMALLOC: one line, before any work
    raise SystemExit(f"error: {e}") from None
  if env is None or not getattr(sys, "orig_argv", None) or not sys.argv or not sys.argv[0]:
    return
  sys.stdout.flush()
  sys.stderr.flush()
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)


def describe() -> str:
  """One line for benchmark headers: which allocator this process runs with."""
  preloaded = [p for p in os.environ.get("LD_PRELOAD", "").split(":") if "malloc" in p]
  return f"host allocator {preloaded[0]} (preloaded)" if preloaded else "host allocator: system malloc"
