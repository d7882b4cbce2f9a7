"""benchmarks/accelerator_check.py on CPU: a GPU lease is short, so every section must run the
first time; here each runs on tiny shapes (`--smoke`), the parity section's loss loop on one
family."""

import json
import math

import jax
import numpy as np

from benchmarks import accelerator_check as check
from common.partitioning import Partitioner


def test_sections_run_and_report(tmp_path):
  out = tmp_path / "check.json"
  rc = check.main(["--smoke", "--sections=env,attention,train,generate,checkpoint",
                   f"--output={out}"])
  results = json.loads(out.read_text())
  assert rc == 0, {k: v.get("error") for k, v in results.items() if k != "args"}
  assert math.isfinite(results["train"]["final_loss"]) and results["train"]["tokens_per_s"] > 0
  assert results["train"]["compiled_memory"]["temp_size_gib"] > 0
  assert results["generate"]["all_rows_full"] is True
  assert results["checkpoint"]["params_equal"] is True


def test_parity_losses_one_device_equal_the_sharded_mesh():
  cfg, model, batch_fn = check._family("gpt")
  one = check._losses(cfg, model, batch_fn, Partitioner(1, 1, 1, devices=jax.devices()[:1]), 2)
  many = check._losses(cfg, model, batch_fn, Partitioner(2, 2, 2, devices=jax.devices()[:8]), 2)
  assert one.shape == (2, 2) and np.isfinite(one).all()
  np.testing.assert_allclose(one, many, rtol=1e-4)
