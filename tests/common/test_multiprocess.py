"""Two processes x 4 fake devices (jax.distributed on 127.0.0.1) train like one process x 8."""

import json
import os
import subprocess
import sys

import numpy as np
import portpicker

from common.partitioning import Partitioner
from configs.gpt import get_config
from tests.fakes import step_losses

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_two_processes_match_one_process(tmp_path):
  port = portpicker.pick_unused_port()
  env = dict(os.environ, PYTHONPATH=ROOT)
  env.pop("XLA_FLAGS", None)
  procs = [subprocess.Popen([sys.executable, "-m", "tests.common.multiprocess_worker", str(port),
                             "2", str(i), str(tmp_path / f"out{i}.json")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
           for i in range(2)]
  for p in procs:
    out, _ = p.communicate(timeout=300)
    assert p.returncode == 0, out.decode()[-3000:]
  results = [json.load(open(tmp_path / f"out{i}.json")) for i in range(2)]
  assert all(r["processes"] == 2 and r["devices"] == 8 for r in results)

  single = step_losses(get_config("tiny"), Partitioner(2, 2, 2))[2]  # 1 process x 8
  for r in results:
    np.testing.assert_allclose(r["losses"], single, atol=1e-5)
