"""BERT network: bidirectional attention, padding invariance, a packed example computed as if
alone, pre-LN option, and head shapes following the task."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from bert_flax.model import BertClassifierModel, BertPretrainModel
from configs.bert import get_config

L = 16


def _net(model):
  with nnx.use_eager_sharding(False):
    return model.make_network(nnx.Rngs(0))


@pytest.fixture(scope="module")
def encode():
  model = BertPretrainModel(get_config("tiny"))
  net = _net(model)
  fn = jax.jit(lambda b: model.encode(net, b, None))
  return lambda **b: np.asarray(fn(b))


def _batch(tokens, segment_ids=None, type_ids=None, positions=None):
  tokens = jnp.asarray(tokens, jnp.int32)[None]
  ones = jnp.ones_like(tokens)
  return dict(tokens=tokens,
              segment_ids=ones if segment_ids is None else jnp.asarray(segment_ids)[None],
              type_ids=0 * ones if type_ids is None else jnp.asarray(type_ids)[None],
              positions=(jnp.arange(tokens.shape[1])[None] if positions is None
                         else jnp.asarray(positions)[None]))


def test_attention_is_bidirectional(encode):
  tokens = np.arange(10, 10 + L)
  changed = tokens.copy()
  changed[-1] = 99  # only the last token changes
  a, b = encode(**_batch(tokens)), encode(**_batch(changed))
  assert np.abs(a[0, 0] - b[0, 0]).max() > 1e-4  # the first token sees the last


def _padded(tokens, length, segment_ids=None, positions=None):
  """`tokens` followed by padding (segment id 0) up to `length`."""
  n = len(tokens)
  pad = lambda x: np.concatenate([x, np.zeros(length - n, int)])
  return _batch(pad(tokens), segment_ids=pad(np.ones(n, int) if segment_ids is None
                                             else segment_ids),
                positions=pad(np.arange(n) if positions is None else positions))


def test_real_tokens_do_not_depend_on_padding(encode):
  tokens = np.arange(10, 20)
  little, much = encode(**_padded(tokens, L)), encode(**_padded(tokens, 2 * L))
  np.testing.assert_allclose(little[0, :10], much[0, :10], atol=1e-5)


def test_packed_example_equals_the_example_alone(encode):
  a, b = np.arange(10, 17), np.arange(40, 49)
  seg = np.r_[np.ones(7, int), 2 * np.ones(9, int)]
  pos = np.r_[np.arange(7), np.arange(9)]
  out = encode(**_batch(np.concatenate([a, b]), segment_ids=seg, positions=pos))
  np.testing.assert_allclose(out[0, :7], encode(**_padded(a, L))[0, :7], atol=1e-5)
  np.testing.assert_allclose(out[0, 7:], encode(**_padded(b, L))[0, :9], atol=1e-5)


def test_type_ids_matter(encode):
  tokens = np.arange(10, 10 + L)
  types = np.r_[np.zeros(L // 2, int), np.ones(L // 2, int)]
  assert np.abs(encode(**_batch(tokens)) - encode(**_batch(tokens, type_ids=types))).max() > 1e-4


def _param_shapes(model):
  with nnx.use_eager_sharding(False):
    abstract = nnx.eval_shape(lambda: model.make_network(nnx.Rngs(0)))
  flat = jax.tree_util.tree_flatten_with_path(nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))[0]
  return {"/".join(str(getattr(k, "key", k)) for k in p): v.shape for p, v in flat}


def test_heads_follow_the_task():
  cfg = get_config("tiny")
  d, v = cfg.model.d_model, cfg.model.vocab_size
  mlm = _param_shapes(BertPretrainModel(cfg))
  assert mlm["mlm_bias"] == (v,) and "pooler/kernel" not in mlm and "nsp/kernel" not in mlm
  # The output layer is tied to the token embedding: no separate [d, vocab] matrix.
  assert not any(s == (d, v) for s in mlm.values())
  cfg.pretrain.nsp = True
  nsp = _param_shapes(BertPretrainModel(cfg))
  assert nsp["nsp/kernel"] == (d, 2) and nsp["pooler/kernel"] == (d, d)
  for n in (1, 2, 5):
    shapes = _param_shapes(BertClassifierModel(cfg, n))
    assert shapes["classifier/kernel"] == (d, n) and shapes["classifier/bias"] == (n,)
    assert "mlm_bias" not in shapes


def test_pre_ln_option_adds_a_final_norm_and_runs():
  cfg = get_config("tiny")
  cfg.model.pre_norm = True
  model = BertPretrainModel(cfg)
  assert "final_norm/scale" in _param_shapes(model)
  net = _net(model)
  logits = jax.jit(lambda b: net.mlm_logits(model.encode(net, b, None), jnp.array([[1, 4]])))(
      _batch(np.arange(10, 10 + L)))
  assert logits.shape == (1, 2, cfg.model.vocab_size) and logits.dtype == jnp.float32
  assert np.isfinite(np.asarray(logits)).all()
