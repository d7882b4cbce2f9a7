"""Params-only loads (whole, or partial for fine-tuning) onto a mesh; missing checkpoints are
clear errors."""

import jax
import numpy as np
import pytest

from common import checkpoint, checkpoint_reader, train_state
from common.partitioning import Partitioner
from configs.gpt import get_config
from gpt_flax.model import GPTModel
from tests.fakes import SyntheticLM


def _setup(cfg, shape, devices=None):
  return train_state.make_setup(GPTModel(cfg), cfg, Partitioner(*shape, devices=devices))


def test_load_params_only(tmp_path):
  cfg = get_config("tiny")
  setup = _setup(cfg, (2, 2, 2))
  state = train_state.init_state(setup)
  ckpt = checkpoint.Checkpointer(str(tmp_path / "checkpoints"), async_save=False)
  ckpt.save(7, state, SyntheticLM(), {"family": "gpt"})
  ckpt.close()
  params, step, meta, missing = checkpoint_reader.load_params(
      str(tmp_path), setup.abstract_state["params"], setup.state_shardings["params"])
  assert step == 7 and meta["identity"] == {"family": "gpt"} and missing == []
  for a, b, s in zip(jax.tree.leaves(state["params"]), jax.tree.leaves(params),
                     jax.tree.leaves(setup.state_shardings["params"])):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert b.sharding == s

  # Fine-tuning: a model with an extra head and without the final norm loads what it shares.
  abstract = dict(setup.abstract_state["params"])
  shardings = dict(setup.state_shardings["params"])
  del abstract["final_norm"], shardings["final_norm"]
  abstract["head"] = {"kernel": jax.ShapeDtypeStruct((64, 2), np.float32)}
  shardings["head"] = {"kernel": shardings["embed"]["embedding"]}
  with pytest.raises(ValueError, match="does not match this model"):
    checkpoint_reader.load_params(str(tmp_path), abstract, shardings)
  params, _, _, missing = checkpoint_reader.load_params(str(tmp_path), abstract, shardings, strict=False)
  assert missing == ["head/kernel"] and params["head"]["kernel"] is None
  np.testing.assert_array_equal(np.asarray(params["embed"]["embedding"]),
                                np.asarray(state["params"]["embed"]["embedding"]))
  # A shared name with another shape is a clear error naming the tensor.
  abstract["embed"] = {"embedding": jax.ShapeDtypeStruct((100, 64), np.float32)}
  with pytest.raises(ValueError, match="tensor embed/embedding has shape"):
    checkpoint_reader.load_params(str(tmp_path), abstract, shardings, strict=False)


def test_missing_checkpoint(tmp_path):
  with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
    checkpoint_reader.resolve_checkpoint(str(tmp_path))
