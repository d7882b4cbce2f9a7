"""The memory floor under batch-8 generation on this CPU: how fast XLA streams weights through
small-batch fp32 matmuls, in both layouts, beside a plain streaming reduction.

A GPT decoding step with batch 8 reads every weight once, so (weight bytes) / (this rate)
bounds the time per token step from below (docs/benchmarks.md, feature-major decoding steps).
Two layouts of the same product: batch-major [8, d] @ [d, n] (the training layout), and
feature-major [n, d] @ [d, 8] (transposed weights against transposed activations), which
`common/feature_major.py` decodes in because XLA:CPU streams it faster.

  PYTHONPATH=. python benchmarks/matvec_bandwidth.py [--rows 8 --repeats 5]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from common import allocator  # noqa: E402


def _seconds(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile
  t0 = time.perf_counter()
  for _ in range(repeats):
    out = fn(*args)
  jax.block_until_ready(out)
  return (time.perf_counter() - t0) / repeats


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--rows", type=int, default=8, help="batch rows of the matmuls")
  p.add_argument("--repeats", type=int, default=5)
  a = p.parse_args(argv)
  print(f"# {allocator.describe()}; {len(os.sched_getaffinity(0))} cores")
  x = jnp.ones((100_000_000,), jnp.float32)
  s = _seconds(jax.jit(jnp.sum), x, repeats=a.repeats)
  print(f"streaming sum of 400 MB: {s * 1e3:.1f} ms = {0.4 / s:.1f} GB/s")
  for n in (2048, 8192):
    # 24 distinct [512, n] weights (more bytes than the caches hold), as a decoding step reads.
    ws = [jax.random.normal(jax.random.key(i), (512, n)) for i in range(24)]
    ws_t = [jnp.asarray(w.T.copy()) for w in ws]
    h = jax.random.normal(jax.random.key(99), (a.rows, 512))
    mb = 24 * 512 * n * 4 / 1e6
    s = _seconds(jax.jit(lambda h, *ws: [h @ w for w in ws]), h, *ws, repeats=a.repeats)
    print(f"24 x [{a.rows}, 512] @ [512, {n}] (batch-major): {mb:.0f} MB of weights in "
          f"{s * 1e3:.1f} ms = {mb / 1e3 / s:.1f} GB/s")
    h_t = jnp.asarray(h.T.copy())
    s = _seconds(jax.jit(lambda h, *ws: [w @ h for w in ws]), h_t, *ws_t, repeats=a.repeats)
    print(f"24 x [{n}, 512] @ [512, {a.rows}] (feature-major): {mb:.0f} MB of weights in "
          f"{s * 1e3:.1f} ms = {mb / 1e3 / s:.1f} GB/s")


if __name__ == "__main__":
  allocator.reexec_with_tcmalloc()
  main()
