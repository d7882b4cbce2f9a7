"""Relative position buckets against a brute-force transcription of T5's definition."""

import math

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from common.relpos import RelativePositionBias, relative_position_bucket


def reference_bucket(rel: int, bidirectional: bool, num_buckets: int, max_distance: int) -> int:
  """mesh_tensorflow's _relative_position_bucket, one integer at a time."""
  ret, n = 0, -rel
  if bidirectional:
    num_buckets //= 2
    if n < 0:
      ret += num_buckets
    n = abs(n)
  else:
    n = max(n, 0)
  max_exact = num_buckets // 2
  if n < max_exact:
    return ret + n
  large = max_exact + int(math.log(n / max_exact) / math.log(max_distance / max_exact)
                          * (num_buckets - max_exact))
  return ret + min(large, num_buckets - 1)


@pytest.mark.parametrize("bidirectional", [True, False])
@pytest.mark.parametrize("num_buckets,max_distance", [(32, 128), (8, 20)])
def test_buckets_match_reference(bidirectional, num_buckets, max_distance):
  rel = np.arange(-300, 301)
  got = np.asarray(relative_position_bucket(jnp.asarray(rel), bidirectional=bidirectional,
                                            num_buckets=num_buckets, max_distance=max_distance))
  want = [reference_bucket(int(r), bidirectional, num_buckets, max_distance) for r in rel]
  np.testing.assert_array_equal(got, want)
  assert got.min() >= 0 and got.max() < num_buckets


def test_encoder_is_bidirectional_and_decoder_causal():
  rel = jnp.arange(1, 200)  # keys after the query
  enc_after = np.asarray(relative_position_bucket(rel, bidirectional=True))
  enc_before = np.asarray(relative_position_bucket(-rel, bidirectional=True))
  assert set(enc_after) & set(enc_before) == set()  # each direction has its own buckets
  dec_after = np.asarray(relative_position_bucket(rel, bidirectional=False))
  assert (dec_after == 0).all()  # the future is never described (it is masked anyway)
  dec_before = np.asarray(relative_position_bucket(-rel, bidirectional=False))
  assert len(set(dec_before)) == 31  # all 32 buckets, one per distance first, for the past


def test_bias_module_shape_and_lookup():
  with nnx.use_eager_sharding(False):
    module = RelativePositionBias(3, bidirectional=False, rngs=nnx.Rngs(0), num_buckets=8,
                                  max_distance=16)
  bias = module(jnp.arange(4) + 2, jnp.arange(6))
  assert bias.shape == (1, 3, 4, 6)
  table = np.asarray(module.embedding[...])
  bucket = reference_bucket(1 - (2 + 3), False, 8, 16)  # query 5, key 1
  np.testing.assert_allclose(bias[0, :, 3, 1], table[bucket])
