"""T5 batched inference: sampled outputs depend on the seed and the input's index, not on the
batch (GPT's sampling semantics, `common.decoding`)."""

import numpy as np
from flax import nnx

from configs.t5 import get_config
from t5x_lite.decode import predict_ids
from t5x_lite.model import T5Model


def test_sampled_outputs_do_not_depend_on_the_batch():
  with nnx.use_eager_sharding(False):
    net = T5Model(get_config("tiny")).make_network(nnx.Rngs(params=0))
  graphdef, params = nnx.split(net)
  rng = np.random.default_rng(0)
  inputs = [np.append(rng.integers(4, 400, n), 1).astype(np.int32) for n in (9, 3, 6)]
  kw = dict(input_len=12, max_decode_len=5, eos_id=1, temperature=1.0, top_k=50, seed=3)
  together = predict_ids(graphdef, params, inputs, batch_size=3, **kw)
  assert predict_ids(graphdef, params, inputs, batch_size=1, **kw) == together
  assert predict_ids(graphdef, params, inputs, batch_size=2, **kw) == together  # one filler row
  assert len({tuple(o) for o in together}) == 3 and all(together)
  assert predict_ids(graphdef, params, inputs, batch_size=3, **{**kw, "seed": 4}) != together
