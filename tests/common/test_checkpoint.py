"""Checkpoints move across meshes."""

import jax
import numpy as np
import pytest

from common import checkpoint, train_state
from common.partitioning import Partitioner
from configs.gpt import get_config
from gpt_flax.model import GPTModel
from tests.fakes import SyntheticLM


def _setup(cfg, shape, devices=None):
  return train_state.make_setup(GPTModel(cfg), cfg, Partitioner(*shape, devices=devices))


@pytest.mark.parametrize("target", [((4, 2, 1), None), ((1, 1, 1), 1)])
def test_restore_onto_another_mesh(tmp_path, target):
  cfg = get_config("tiny")
  src = _setup(cfg, (2, 1, 4))
  state = train_state.init_state(src)
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  data = SyntheticLM()
  next(data)
  ckpt.save(1, state, data, {"family": "gpt"})
  ckpt.close()
  shape, ndev = target
  dst = _setup(cfg, shape, jax.devices()[:ndev] if ndev else None)
  resumed = SyntheticLM()
  restored = checkpoint.Checkpointer(str(tmp_path)).restore(
      1, dst.abstract_state, dst.state_shardings, resumed)
  assert resumed.i == 1
  for a, b, s in zip(jax.tree.leaves(state), jax.tree.leaves(restored),
                     jax.tree.leaves(dst.state_shardings)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert b.sharding == s
