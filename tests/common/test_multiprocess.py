"""Two processes x 4 fake devices (jax.distributed on 127.0.0.1) train like one process x 8."""

import json
import os
import subprocess
import sys

import numpy as np
import portpicker

from common import sharding, trainer
from configs.gpt import get_config
from gpt_flax.model import GPTModel
from tests.fakes import SyntheticLM

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

  cfg = get_config("tiny")
  mesh = sharding.make_mesh(2, 2, 2)  # one process, 8 fake devices
  setup = trainer.make_setup(GPTModel(cfg), cfg, mesh)
  state = trainer.init_state(setup)
  step = trainer.make_train_step(setup)
  data = SyntheticLM(cfg.train.batch_size, cfg.data.seq_len, cfg.model.vocab_size)
  single = []
  for _ in range(3):
    state, m = step(state, sharding.global_batch(next(data), mesh))
    single.append(float(m["loss"]))
  for r in results:
    np.testing.assert_allclose(r["losses"], single, atol=1e-5)
