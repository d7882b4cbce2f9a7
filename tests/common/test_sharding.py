"""Mesh construction, rules -> shardings, and sharded steps equal to the 1-device step."""

import jax
import numpy as np
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from common import sharding, train_state
from common.partitioning import Partitioner
from configs.gpt import get_config
from gpt_flax.model import GPTModel
from tests.fakes import step_losses

MESHES = [(8, 1, 1), (2, 2, 2), (1, 2, 4), (2, 1, 4)]


def test_make_mesh_infers_minus_one():
  partitioner = Partitioner(-1, 2, 1)
  assert dict(partitioner.shape) == {"data": 4, "fsdp": 2, "tensor": 1}


@pytest.mark.parametrize("sizes", [(3, 1, 1), (-1, -1, 1), (2, 2, 4)])
def test_make_mesh_rejects_bad_sizes(sizes):
  with pytest.raises(ValueError, match="mesh"):
    Partitioner(*sizes)


def test_unknown_logical_axis_is_an_error():
  with pytest.raises(ValueError, match="no sharding rule"):
    sharding.logical_to_spec(("embed", "bogus"), sharding.RULE_PRESETS["fsdp_tp"])


def test_unknown_rules_preset():
  with pytest.raises(ValueError, match="valid"):
    sharding.get_rules("nope")


@pytest.fixture(scope="module")
def reference():
  cfg = get_config("tiny")
  partitioner = Partitioner(1, 1, 1, devices=jax.devices()[:1])
  return step_losses(cfg, partitioner)[2]


@pytest.mark.parametrize("shape", MESHES)
def test_sharded_params_and_losses_match_single_device(shape, reference):
  cfg = get_config("tiny")
  partitioner = Partitioner(*shape)
  setup, state, losses = step_losses(cfg, partitioner)
  rules = dict(sharding.RULE_PRESETS[cfg.mesh.rules])
  # Every parameter is laid out exactly as the rules table says for its logical names.
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: GPTModel(cfg).make_network(nnx.Rngs(0)))
  variables = jax.tree.leaves(nnx.state(abstract, nnx.Param),
                              is_leaf=lambda x: isinstance(x, nnx.Variable))
  arrays = jax.tree.leaves(state["params"])
  assert len(variables) == len(arrays)
  for var, arr in zip(variables, arrays):
    names = var.get_metadata()["out_sharding"]
    assert arr.sharding.spec == P(*(rules[n] for n in names)), (names, arr.sharding.spec)
  kernel = state["params"]["layers"]["layers"]["mlp"]["wi"]["kernel"]
  assert kernel.sharding.spec == P(rules["layers"], rules["embed"], rules["mlp"])
  np.testing.assert_allclose(losses, reference, rtol=0, atol=1e-5)


def test_adam_state_follows_params():
  cfg = get_config("tiny")
  partitioner = Partitioner(2, 2, 2)
  setup = train_state.make_setup(GPTModel(cfg), cfg, partitioner)
  mu = setup.state_shardings["opt_state"][1][0].mu
  assert mu["embed"]["embedding"].spec == setup.state_shardings["params"]["embed"]["embedding"].spec


def test_adafactor_factored_moments_are_sharded_like_their_params():
  cfg = get_config("tiny")
  cfg.optimizer.name = "adafactor"
  cfg.optimizer.adafactor_min_dim_to_factor = 32  # factor the tiny model's matrices
  partitioner = Partitioner(2, 2, 2)
  setup = train_state.make_setup(GPTModel(cfg), cfg, partitioner)
  pspec = setup.state_specs["params"]["layers"]["layers"]["mlp"]["wi"]["kernel"]  # (layers, embed, mlp)
  leaves = jax.tree_util.tree_flatten_with_path(setup.state_specs["opt_state"],
                                                is_leaf=lambda x: isinstance(x, P))[0]
  found = {}
  for path, spec in leaves:
    key = jax.tree_util.keystr(path)
    if "['mlp']['wi']['kernel']" in key:
      for name in ("v_row", "v_col"):
        if name in key:
          found[name] = spec
  assert found["v_row"] == P(*tuple(pspec)[:-1])
  assert found["v_col"] == P(*(tuple(pspec)[:-2] + tuple(pspec)[-1:]))
  # And training with it on a sharded mesh matches one device.
  _, _, sharded = step_losses(cfg, partitioner, num_steps=2)
  _, _, single = step_losses(cfg, Partitioner(1, 1, 1, devices=jax.devices()[:1]), 2)
  np.testing.assert_allclose(sharded, single, atol=1e-5)


def test_global_batch_is_sharded_over_data_axes():
  partitioner = Partitioner(2, 2, 2)
  batch = partitioner.global_batch({"x": np.arange(32, dtype=np.int32).reshape(8, 4)})
  assert batch["x"].sharding.spec == P(("data", "fsdp"), None)
  np.testing.assert_array_equal(np.asarray(batch["x"]), np.arange(32).reshape(8, 4))


def test_batch_not_divisible_by_data_axes():
  partitioner = Partitioner(8, 1, 1)
  cfg = get_config("tiny")
  cfg.train.batch_size = 12
  with pytest.raises(ValueError, match="not divisible by the data axes"):
    train_state.check_config(cfg, partitioner)
