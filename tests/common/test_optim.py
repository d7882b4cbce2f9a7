"""Schedules, weight-decay mask and optimizer selection."""

import jax.numpy as jnp
import numpy as np
import pytest

from common.config import base_config
from common.optim import decay_mask, make_optimizer, make_schedule


def _opt(**kw):
  c = base_config().optimizer
  c.update(kw)
  return c


@pytest.mark.parametrize("name", ["cosine", "linear", "rsqrt", "constant"])
def test_schedules_warm_up_then_follow_shape(name):
  s = make_schedule(_opt(schedule=name, learning_rate=1.0, warmup_steps=10, end_lr_ratio=0.1), 110)
  assert float(s(0)) == 0.0
  np.testing.assert_allclose(float(s(5)), 0.5, rtol=1e-6)
  np.testing.assert_allclose(float(s(10)), 1.0, rtol=1e-6)
  end = float(s(110))
  expected = {"cosine": 0.1, "linear": 0.1, "rsqrt": (10 / 110) ** 0.5, "constant": 1.0}[name]
  np.testing.assert_allclose(end, expected, rtol=1e-5)


def test_unknown_schedule_and_optimizer():
  with pytest.raises(ValueError, match="unknown optimizer.schedule 'step'"):
    make_schedule(_opt(schedule="step"), 10)
  with pytest.raises(ValueError, match="unknown optimizer.name 'sgd'"):
    make_optimizer(_opt(name="sgd"), 10)


def test_decay_mask_spares_biases_and_norms():
  params = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2), "scale": jnp.zeros(2)}
  assert decay_mask(params) == {"kernel": True, "bias": False, "scale": False}


def test_weight_decay_applies_to_matrices_only():
  tx = make_optimizer(_opt(learning_rate=0.1, warmup_steps=0, schedule="constant",
                           weight_decay=0.5, clip_norm=0.0), 10)
  params = {"kernel": jnp.ones((2, 2)), "bias": jnp.ones(2)}
  grads = {"kernel": jnp.zeros((2, 2)), "bias": jnp.zeros(2)}
  updates, _ = tx.update(grads, tx.init(params), params)
  assert float(jnp.abs(updates["kernel"]).max()) > 0
  assert float(jnp.abs(updates["bias"]).max()) == 0
