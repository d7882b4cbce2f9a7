"""Cross-entropy sums against optax, with weights, label smoothing and z-loss."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from common.losses import cross_entropy


def _data():
  logits = jax.random.normal(jax.random.key(0), (2, 3, 7)) * 3
  targets = jnp.array([[1, 2, 3], [4, 5, 6]])
  weights = jnp.array([[1.0, 1.0, 0.0], [1.0, 0.5, 1.0]])
  return logits, targets, weights


def test_matches_optax_with_weights():
  logits, targets, weights = _data()
  out = cross_entropy(logits, targets, weights)
  want = optax.softmax_cross_entropy_with_integer_labels(logits, targets)
  np.testing.assert_allclose(out["loss"], (want * weights).sum(), rtol=1e-6)
  assert float(out["weights"]) == 4.5
  correct = (jnp.argmax(logits, -1) == targets) * weights
  np.testing.assert_allclose(out["correct"], correct.sum())


def test_label_smoothing_matches_optax():
  logits, targets, weights = _data()
  out = cross_entropy(logits, targets, weights, label_smoothing=0.1)
  soft = optax.smooth_labels(jax.nn.one_hot(targets, 7), 0.1)
  want = optax.softmax_cross_entropy(logits, soft)
  np.testing.assert_allclose(out["loss"], (want * weights).sum(), rtol=1e-5)


def test_z_loss():
  logits, targets, weights = _data()
  base = cross_entropy(logits, targets, weights)["loss"]
  out = cross_entropy(logits, targets, weights, z_loss=1e-2)
  z = 1e-2 * jnp.square(jax.nn.logsumexp(logits, -1))
  np.testing.assert_allclose(out["z_loss"], (z * weights).sum(), rtol=1e-6)
  np.testing.assert_allclose(out["loss"], base + out["z_loss"], rtol=1e-6)
