"""The memory floor under batch-8 generation on this CPU: how fast XLA streams weights through
small-batch fp32 matmuls, beside a plain streaming reduction of the same kind of memory.

A GPT decoding step with batch 8 reads every weight once ([8, d] @ [d, n] matmuls), so
(weight bytes) / (this rate) bounds the time per token step from below (README, GPT generation).

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
    h = jax.random.normal(jax.random.key(99), (a.rows, 512))
    s = _seconds(jax.jit(lambda h, *ws: [h @ w for w in ws]), h, *ws, repeats=a.repeats)
    mb = 24 * 512 * n * 4 / 1e6
    print(f"24 x [{a.rows}, 512] @ [512, {n}]: {mb:.0f} MB of weights in {s * 1e3:.1f} ms = "
          f"{mb / 1e3 / s:.1f} GB/s")


if __name__ == "__main__":
  allocator.reexec_with_tcmalloc()
  main()
