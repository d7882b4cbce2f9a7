"""The tcmalloc re-exec: which library, when to skip, and that the command really re-runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from common import allocator

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _loaded_libc() -> str:
  """A shared library that is certainly present and harmless to preload: this process's libc."""
  with open("/proc/self/maps") as f:
    paths = {line.split()[-1] for line in f if "libc.so" in line or "libc-" in line}
  assert paths, "no libc mapped"
  return min(paths)


def test_opt_out_and_explicit_path(tmp_path):
  assert allocator.find_library({allocator.ENV: "0"}) is None
  lib = tmp_path / "libfake.so"
  lib.write_bytes(b"")
  assert allocator.find_library({allocator.ENV: str(lib)}) == str(lib)
  with pytest.raises(ValueError, match=f"{allocator.ENV}=.*no such file"):
    allocator.find_library({allocator.ENV: str(tmp_path / "missing.so")})


def test_preload_env_prepends_once(tmp_path):
  lib = tmp_path / "libtcmalloc_x.so"
  lib.write_bytes(b"")
  env = allocator.preload_env({allocator.ENV: str(lib), "LD_PRELOAD": "/other.so"})
  assert env["LD_PRELOAD"] == f"{lib}:/other.so"
  assert allocator.preload_env(env) is None  # already preloaded: no loop
  assert allocator.preload_env({allocator.ENV: "off"}) is None


def test_reexec_runs_the_command_again_with_the_library():
  lib = _loaded_libc()
  code = ("import os, sys; print('start', flush=True); from common import allocator; "
          "allocator.reexec_with_tcmalloc(); print('preload=' + os.environ.get('LD_PRELOAD', ''))")
  env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
  env.update({allocator.ENV: lib, "PYTHONPATH": ROOT})
  done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                        timeout=60, check=True)
  assert done.stdout.split() == ["start", "start", f"preload={lib}"], done.stdout


def test_bad_library_path_is_one_error_line(tmp_path):
  env = dict(os.environ, PYTHONPATH=ROOT, **{allocator.ENV: str(tmp_path / "nope.so")})
  code = "from common import allocator; allocator.reexec_with_tcmalloc()"
  done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                        text=True, timeout=60, check=False)
  assert done.returncode == 1 and "Traceback" not in done.stderr
  assert done.stderr.strip() == (f"error: {allocator.ENV}='{tmp_path / 'nope.so'}': no such file "
                                 "(set it to a tcmalloc library path, or 0 to use the system "
                                 "allocator)")
