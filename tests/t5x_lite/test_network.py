"""T5 network: cached decoding equals the full forward pass, T5X init, 1.0 variant,
one relative-position table per stack, and sharded train steps equal one device."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common import steps, train_state
from common.partitioning import Partitioner
from configs.t5 import get_config
from t5x_lite.model import T5Model
from t5x_lite.network import IncrementalDecoder
from tests.t5x_lite.fakes import synthetic_batch


def _net(cfg):
  with nnx.use_eager_sharding(False):
    return T5Model(cfg).make_network(nnx.Rngs(params=0))


@pytest.mark.parametrize("variant", ["v1_1_scan", "v1_0_loop"])
def test_cached_decoding_equals_full_forward(variant):
  cfg = get_config("tiny")
  if variant == "v1_0_loop":
    cfg.model.update(activation="relu", logits_via_embedding=True, scan_layers=False)
  net = _net(cfg)
  b = synthetic_batch(0, batch=3, input_len=12, target_len=7)
  full = net(b["encoder_input_tokens"], b["decoder_input_tokens"],
             encoder_segment_ids_BxS=b["encoder_segment_ids"],
             decoder_segment_ids_BxT=b["decoder_segment_ids"])
  encoded = net.encode(b["encoder_input_tokens"], b["encoder_segment_ids"])
  decoder = IncrementalDecoder(net, encoded, b["encoder_segment_ids"])
  assert len(decoder.layers) == cfg.model.num_decoder_layers
  cache = decoder.init_cache(3, 7)
  outs = []
  for t in range(7):
    logits, cache = decoder(b["decoder_input_tokens"][:, t:t + 1], np.ones((3, 1), np.int32),
                            cache)
    outs.append(logits)
  assert int(cache.index) == 7
  inc = jnp.concatenate(outs, axis=1)
  real = b["decoder_segment_ids"] > 0
  np.testing.assert_allclose(np.asarray(inc)[real], np.asarray(full)[real], atol=2e-5)


def test_t5x_init_and_shared_relpos_tables():
  cfg = get_config("tiny")  # d_model 64, 4 heads x 16, d_ff 128
  params = nnx.to_pure_dict(nnx.state(_net(cfg), nnx.Param))
  assert set(params["encoder_relpos"]) == {"embedding"}
  assert params["encoder_relpos"]["embedding"].shape == (32, 4)  # one table per stack
  assert "relpos" not in str(params["encoder"].keys())
  attn = params["encoder"]["layers"]["attn"]
  # Unit-std truncated normal (std ~0.88) rescaled per projection; query also by 1/sqrt(16).
  np.testing.assert_allclose(np.std(attn["key"]["kernel"]), 0.88 * 64 ** -0.5, rtol=0.1)
  np.testing.assert_allclose(np.std(attn["query"]["kernel"]), 0.88 / 8 / 4, rtol=0.1)
  np.testing.assert_allclose(np.std(params["decoder"]["layers"]["mlp"]["wo"]["kernel"]),
                             0.88 * 128 ** -0.5, rtol=0.1)
  assert "bias" not in str(jax.tree_util.tree_structure(params))  # no dense/norm biases


def _losses(cfg, partitioner, num_steps=2):
  setup = train_state.make_setup(T5Model(cfg), cfg, partitioner)
  state = train_state.init_state(setup)
  step = steps.make_train_step(setup)
  out = []
  for i in range(num_steps):
    state, m = step(state, partitioner.global_batch(synthetic_batch(i, input_len=32,
                                                                 target_len=16)))
    out.append(float(m["loss"]))
  return setup, out


def test_sharded_adafactor_steps_equal_one_device():
  cfg = get_config("tiny")  # Adafactor, factored moments for dims >= 32
  single = _losses(cfg, Partitioner(1, 1, 1, devices=jax.devices()[:1]))[1]
  setup, sharded = _losses(cfg, Partitioner(2, 2, 2))
  np.testing.assert_allclose(sharded, single, atol=1e-5)
  assert single[1] < single[0]
  # The factored second moments are sharded like their parameters.
  specs = jax.tree_util.tree_flatten_with_path(setup.state_specs["opt_state"],
                                               is_leaf=lambda x: isinstance(x, jax.sharding.PartitionSpec))[0]
  pspec = tuple(setup.state_specs["params"]["decoder"]["layers"]["mlp"]["wi"]["kernel"])
  found = {n: s for p, s in specs for n in ("v_row", "v_col")
           if n in jax.tree_util.keystr(p) and "['mlp']['wi']['kernel']" in jax.tree_util.keystr(p)
           and "decoder" in jax.tree_util.keystr(p)}
  assert tuple(found["v_row"]) == pspec[:-1] and tuple(found["v_col"]) == pspec[:-2] + pspec[-1:]


def test_sharded_adamw_steps_equal_one_device():
  cfg = get_config("tiny")
  cfg.optimizer.update(name="adamw", learning_rate=1e-3, schedule="constant")
  single = _losses(cfg, Partitioner(1, 1, 1, devices=jax.devices()[:1]))[1]
  sharded = _losses(cfg, Partitioner(1, 2, 4))[1]
  np.testing.assert_allclose(sharded, single, atol=1e-5)
  assert T5Model(cfg).net_cfg.attn_logit_scaling == "explicit"
