"""Runs many command-line invocations with one interpreter start: every command module is
imported once, then each case runs in a fork of this process (own flags, own exit status,
own stdout/stderr), so a table of bad inputs costs one JAX import, not one per case.

  python -m tests.cli_cases CASES.json RESULTS.json

CASES.json: [{"id": ..., "module": "gpt_flax.train", "argv": [...]}, ...]
RESULTS.json: {id: {"rc": int, "stdout": str, "stderr": str}}; rc -9 = killed at the timeout.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import tempfile
import time

TIMEOUT_S = 120.0


def _child(module, argv: list[str], out: str, err: str) -> None:
  """In the fork: the command with its output in files; never returns."""
  code = 0
  try:
    for fd, path in ((1, out), (2, err)):
      os.dup2(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC), fd)
    sys.argv = [module.__name__] + argv
    module.cli_main()
  except SystemExit as e:
    code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException:  # pylint: disable=broad-except
    import traceback  # pylint: disable=g-import-not-at-top
    traceback.print_exc()
    code = 1
  finally:
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)  # pylint: disable=protected-access


def _wait(pid: int) -> int:
  start = time.time()
  while time.time() - start < TIMEOUT_S:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
      return os.waitstatus_to_exitcode(status)
    time.sleep(0.02)
  os.kill(pid, 9)
  os.waitpid(pid, 0)
  return -9


def main(cases_path: str, results_path: str) -> None:
  with open(cases_path) as f:
    cases = json.load(f)
  modules = {name: importlib.import_module(name) for name in sorted({c["module"] for c in cases})}
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    out, err = os.path.join(tmp, "out"), os.path.join(tmp, "err")
    for case in cases:
      sys.stdout.flush()
      sys.stderr.flush()
      pid = os.fork()
      if pid == 0:
        _child(modules[case["module"]], case["argv"], out, err)
      rc = _wait(pid)
      with open(out, errors="replace") as o, open(err, errors="replace") as e:
        results[case["id"]] = {"rc": rc, "stdout": o.read(), "stderr": e.read()}
  with open(results_path, "w") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  main(*sys.argv[1:])
