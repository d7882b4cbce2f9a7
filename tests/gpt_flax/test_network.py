"""GPT network: the cached `Decoder` equals the full forward pass at every position; ragged
batched generation equals one-at-a-time; GPT-2 initialisation details."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common import decoding
from configs.gpt import get_config
from gpt_flax.generate import generate_tokens
from gpt_flax.model import GPTModel
from gpt_flax.network import Decoder


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


@pytest.mark.parametrize("scan_layers,use_feature_major",
                         [(True, True), (False, True), (False, False)])
def test_unrolled_decoder_equals_the_full_forward_pass(scan_layers, use_feature_major):
  """`Decoder` (what `gpt_flax.generate` runs) re-implements the cached forward pass; each logit it
  returns, after a ragged left-padded prefill and then one token at a time (feature-major, as
  on CPU, or through the modules, as on TPU/GPU), equals the full forward pass over that row's
  unpadded tokens at that position."""
  cfg = get_config("tiny")
  cfg.model.scan_layers = scan_layers
  with nnx.use_eager_sharding(False):
    net = GPTModel(cfg).make_network(nnx.Rngs(0))
  rows = [list(map(int, jax.random.randint(jax.random.key(i), (n,), 4, 512)))
          for i, n in enumerate((12, 9))]  # row 1's prompt is 3 tokens shorter: left-padded
  prompt_len, steps = 5, 4
  prompts = [rows[0][:prompt_len], rows[1][:prompt_len - 3]]
  full = []
  for row in rows:
    t = jnp.asarray([row])
    full.append(np.asarray(net(t, positions_BxL=jnp.arange(len(row))[None],
                               segment_ids_BxL=jnp.ones_like(t))[0]))
  decoder = Decoder(net, use_feature_major=use_feature_major)
  assert (decoder.step_weights is not None) == use_feature_major
  cache = decoder.init_cache(2, prompt_len + steps)
  tokens, mask = (jnp.asarray(a) for a in decoding.left_pad(prompts, length=prompt_len))
  positions = jnp.maximum(jnp.cumsum(mask, axis=1) - 1, 0)
  logits, cache = decoder(tokens, positions, mask, cache)
  assert logits.shape == (2, 1, cfg.model.vocab_size)
  for i, p in enumerate(prompts):
    np.testing.assert_allclose(logits[i, 0], full[i][len(p) - 1], rtol=1e-5, atol=1e-5)
  for step in range(steps):  # feed each row's own next token
    tok = jnp.asarray([[rows[i][len(p) + step]] for i, p in enumerate(prompts)], jnp.int32)
    pos = jnp.asarray([[len(p) + step] for p in prompts], jnp.int32)
    logits, cache = decoder(tok, pos, jnp.ones_like(tok), cache)
    for i, p in enumerate(prompts):
      np.testing.assert_allclose(logits[i, 0], full[i][len(p) + step], rtol=1e-5, atol=1e-5)
  assert int(cache.index) == prompt_len + steps
