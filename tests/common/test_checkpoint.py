"""Checkpoints move across meshes; params-only loads; missing checkpoints are clear errors."""

import jax
import numpy as np
import pytest

from common import checkpoint, sharding, trainer
from configs.gpt import get_config
from gpt_flax.model import GPTModel
from tests.fakes import SyntheticLM


def _setup(cfg, shape, devices=None):
  return trainer.make_setup(GPTModel(cfg), cfg, sharding.make_mesh(*shape, devices=devices))


@pytest.mark.parametrize("target", [((4, 2, 1), None), ((1, 1, 1), 1)])
def test_restore_onto_another_mesh(tmp_path, target):
  cfg = get_config("tiny")
  src = _setup(cfg, (2, 1, 4))
  state = trainer.init_state(src)
  ckpt = checkpoint.Checkpointer(str(tmp_path), async_save=False)
  data = SyntheticLM()
  next(data)
  ckpt.save(1, state, data, {"family": "gpt"}, force=True)
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


def test_load_params_only(tmp_path):
  cfg = get_config("tiny")
  setup = _setup(cfg, (2, 2, 2))
  state = trainer.init_state(setup)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
  ckpt.save(7, state, SyntheticLM(), {"family": "gpt"}, force=True)
  ckpt.close()
  params, step, meta = checkpoint.load_params(str(tmp_path), setup.abstract_state["params"],
                                              setup.state_shardings["params"])
  assert step == 7 and meta["identity"] == {"family": "gpt"}
  for a, b in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_missing_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
    checkpoint.resolve_checkpoint(str(tmp_path))
