"""GPT network: ragged batched generation equals one-at-a-time; GPT-2 initialisation details.
(Cached decoding = the full forward pass at every position: test_generate.py, `Decoder`.)"""

import math

import jax
import numpy as np
from flax import nnx

from configs.gpt import get_config
from gpt_flax.generate import generate_tokens
from gpt_flax.model import GPTModel


def _net():
  with nnx.use_eager_sharding(False):
    return GPTModel(get_config("tiny")).make_network(nnx.Rngs(0))


def test_ragged_batch_equals_one_at_a_time():
  net = _net()
  gd, params = nnx.split(net)
  prompts = [[3, 17, 99, 250, 7], [3, 42], [3, 8, 9]]
  kw = dict(max_len=64, max_new_tokens=6, eos_id=1)
  batched = generate_tokens(gd, params, prompts, **kw)
  for p, out in zip(prompts, batched):
    assert generate_tokens(gd, params, [p], **kw)[0] == out
  assert generate_tokens(gd, params, prompts, **kw) == batched  # greedy is deterministic


def test_prompt_longer_than_context_is_an_error():
  net = _net()
  gd, params = nnx.split(net)
  try:
    generate_tokens(gd, params, [[3] * 60], max_len=64, max_new_tokens=10, eos_id=1)
  except ValueError as e:
    assert "context window of 64" in str(e)
  else:
    raise AssertionError("expected ValueError")


def test_gpt2_init_and_tied_logits():
  cfg = get_config("tiny")
  net = _net()
  wo = np.asarray(net.layers.layers.mlp.wo.kernel[...])
  wi = np.asarray(net.layers.layers.mlp.wi.kernel[...])
  residual_std = 0.02 / math.sqrt(2 * cfg.model.num_layers)
  assert abs(wo.std() - residual_std * 0.88) < 0.2 * residual_std  # truncated at 2 std
  assert abs(wi.std() - 0.02 * 0.88) < 0.004
  # No separate output matrix: logits come from the token embedding.
  names = {jax.tree_util.keystr(p) for p, _ in
           jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(net, nnx.Param)))[0]}
  assert not any("lm_head" in n or "logits" in n for n in names)


def test_flops_and_param_counts():
  model = GPTModel(get_config("tiny"))
  c = model.net_cfg
  d, f, n = c.d_model, c.d_ff, c.num_layers
  per_layer = 4 * d * d + 4 * d + 2 * d * f + f + d + 4 * d  # attn, mlp, 2 layernorms
  assert model.num_params() == n * per_layer + 2 * d  # + final layernorm
  seq = get_config("tiny").data.seq_len
  assert model.flops_per_token() == 6 * (model.num_params() + c.vocab_size * d) + 12 * n * d * seq
