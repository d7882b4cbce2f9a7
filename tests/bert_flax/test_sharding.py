"""Sharded BERT train steps (MLM + NSP, dropout on) equal the 1-device steps."""

import jax
import numpy as np

from bert_flax.model import BertPretrainModel
from common import steps, train_state
from common.partitioning import Partitioner
from configs.bert import get_config
from tests.bert_flax.fakes import synthetic_batch


def _cfg():
  cfg = get_config("tiny")
  cfg.pretrain.nsp = True
  return cfg


def _losses(partitioner, num_steps=2):
  cfg = _cfg()
  setup = train_state.make_setup(BertPretrainModel(cfg), cfg, partitioner)
  state = train_state.init_state(setup)
  step = steps.make_train_step(setup)
  out = []
  for i in range(num_steps):
    state, m = step(state, partitioner.global_batch(synthetic_batch(cfg, i)))
    out.append([float(m[k]) for k in ("loss", "mlm_loss", "nsp_loss", "grad_norm")])
  return np.array(out)


def test_sharded_steps_match_single_device():
  """One mesh with every axis > 1 (data, fsdp and tensor parallel at once) keeps this cheap."""
  reference = _losses(Partitioner(1, 1, 1, devices=jax.devices()[:1]))
  got = _losses(Partitioner(2, 2, 2))
  assert np.isfinite(reference).all() and reference[-1, 0] < reference[0, 0] + 1.0
  np.testing.assert_allclose(got, reference, rtol=2e-5, atol=2e-5)
