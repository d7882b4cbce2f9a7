"""T5 training and beam-search decoding speed: ours (JAX/Flax NNX) vs Hugging Face
`T5ForConditionalGeneration` (PyTorch, CPU).

Shape (configs/t5.py preset `bench`): vocab 8192, 6 encoder + 6 decoder layers, d_model 512,
8 heads x 64, d_ff 1024 gated-GELU (T5.1.1), untied logits, dropout 0; inputs 256, targets
64, batch 8. Both train with AdamW (lr 1e-4, wd 0 — T5 would use Adafactor; AdamW is the
optimizer both libraries implement the same way) on the same random token batches, fp32 and
bf16 (ours: fp32 params, bf16 matmul inputs with fp32 accumulation; HF: torch.autocast bf16).
Training tokens/s counts input + target tokens (8 x 320 per step).

Decoding: beam search, beam 4, exactly 64 new tokens for each of the 8 inputs (EOS is made
impossible on both sides so both do the same work; HF: `min_new_tokens=max_new_tokens`),
encoder once, decoder with a KV cache (HF caches cross-attention keys/values, so do we).
Reported: new tokens/s per input sequence (8 x 64 per call).

Configurations are interleaved trial by trial; medians are reported.

  PYTHONPATH=. python benchmarks/t5_train.py [--trials 3 --steps 3 --only train|decode]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks import harness  # noqa: E402  (imports no JAX)

harness.use_real_cpu()

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402


from common import allocator, steps, train_state  # noqa: E402
from common.data.seq2seq import pad_batch  # noqa: E402
from common.partitioning import Partitioner  # noqa: E402
from configs.t5 import get_config  # noqa: E402
from t5x_lite.decode import _decode_jit  # noqa: E402
from t5x_lite.model import T5Model  # noqa: E402



def bench_config(dtype: str):
  cfg = get_config("bench")
  cfg.model.dtype = dtype
  cfg.optimizer.update(name="adamw", learning_rate=1e-4, warmup_steps=0, schedule="constant",
                       weight_decay=0.0, clip_norm=1.0)
  cfg.loss.z_loss = 0.0
  return cfg


def batches(n: int, cfg, seed: int = 0) -> list[dict[str, np.ndarray]]:
  rng = np.random.default_rng(seed)
  b, s, t, v = cfg.train.batch_size, cfg.data.max_input_len, cfg.data.max_target_len, 8000
  return [pad_batch([{"inputs": rng.integers(2, v, s).astype(np.int32),
                      "targets": rng.integers(2, v, t).astype(np.int32)} for _ in range(b)], s, t)
          for _ in range(n)]


class Ours:
  def __init__(self, prec: str, data):
    self.name = f"ours {prec}"
    self.cfg = bench_config(harness.PRECISIONS[prec])
    self.partitioner = Partitioner(1, 1, 1)
    self.setup = train_state.make_setup(T5Model(self.cfg), self.cfg, self.partitioner)
    self.state = train_state.init_state(self.setup)
    self.step_fn = steps.make_train_step(self.setup)
    self.data = [self.partitioner.global_batch(b) for b in data]
    self.i, self.metrics = 0, None

  def train_step(self):
    self.state, self.metrics = self.step_fn(self.state, self.data[self.i % len(self.data)])
    self.i += 1

  def sync(self):
    jax.block_until_ready(self.state)
    return float(self.metrics["loss"])

  def decode(self, enc_tokens, beam, new_tokens):
    with self.setup.partitioner.context():
      out = _decode_jit(self.setup.graphdef, self.state["params"], jnp.asarray(enc_tokens),
                        jnp.ones(enc_tokens.shape, jnp.int32), jax.random.key(0),
                        max_decode_len=new_tokens, beam_size=beam, alpha=0.6, temperature=0.0,
                        top_k=0, top_p=1.0, eos_id=self.cfg.model.vocab_size + 1,
                        vocab_size=None)
    return jax.block_until_ready(out)


class HF:
  def __init__(self, prec: str, data, threads: int):
    import torch
    from transformers import T5Config, T5ForConditionalGeneration
    torch.set_num_threads(threads)
    self.torch, self.prec, self.name = torch, prec, f"HF {prec}"
    m = bench_config("float32").model
    hf_cfg = T5Config(vocab_size=m.vocab_size, d_model=m.d_model, d_kv=m.head_dim, d_ff=m.d_ff,
                      num_layers=m.num_encoder_layers, num_decoder_layers=m.num_decoder_layers,
                      num_heads=m.num_heads, feed_forward_proj="gated-gelu", dropout_rate=0.0,
                      tie_word_embeddings=False, relative_attention_num_buckets=32,
                      relative_attention_max_distance=128, decoder_start_token_id=0,
                      pad_token_id=0, eos_token_id=1)
    torch.manual_seed(0)
    self.model = T5ForConditionalGeneration(hf_cfg)
    self.opt = torch.optim.AdamW(self.model.parameters(), lr=1e-4, weight_decay=0.0)
    self.data = [{k: torch.from_numpy(b[k].astype(np.int64)) for k in
                  ("encoder_input_tokens", "decoder_input_tokens", "decoder_target_tokens")}
                 for b in data]
    self.i, self.loss = 0, None

  def _autocast(self):
    return self.torch.autocast("cpu", dtype=self.torch.bfloat16, enabled=self.prec == "bf16")

  def train_step(self):
    b = self.data[self.i % len(self.data)]
    self.model.train()
    self.opt.zero_grad(set_to_none=True)
    with self._autocast():
      logits = self.model(input_ids=b["encoder_input_tokens"],
                          decoder_input_ids=b["decoder_input_tokens"]).logits
    loss = self.torch.nn.functional.cross_entropy(logits.float().flatten(0, 1),
                                                  b["decoder_target_tokens"].flatten())
    loss.backward()
    self.torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
    self.opt.step()
    self.loss, self.i = loss, self.i + 1

  def sync(self):
    return float(self.loss.detach())

  def decode(self, enc_tokens, beam, new_tokens):
    self.model.eval()
    with self.torch.no_grad(), self._autocast():
      return self.model.generate(input_ids=self.torch.from_numpy(enc_tokens.astype(np.int64)),
                                 num_beams=beam, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, length_penalty=0.6,
                                 early_stopping=False, do_sample=False)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--trials", type=int, default=3)
  p.add_argument("--steps", type=int, default=3, help="timed training steps per trial")
  p.add_argument("--beam", type=int, default=4)
  p.add_argument("--new_tokens", type=int, default=64)
  p.add_argument("--only", choices=("train", "decode"), default=None)
  p.add_argument("--precisions", default="fp32,bf16")
  a = p.parse_args(argv)
  threads = harness.cores()
  precs = harness.parse_precisions(p, a.precisions)
  data = batches(2, bench_config("float32"))
  runners = []
  for prec in precs:
    runners += [Ours(prec, data), HF(prec, data, threads)]
  cfg = bench_config("float32")
  train_tokens = cfg.train.batch_size * (cfg.data.max_input_len + cfg.data.max_target_len)
  enc = data[0]["encoder_input_tokens"]
  print(f"# T5 bench: 6+6 layers, d 512, 8x64 heads, d_ff 1024 gated-gelu, vocab 8192, inputs "
        f"256, targets 64, batch 8; {threads} cores, load average {os.getloadavg()[0]:.1f}")
  print(f"# {allocator.describe()} (both frameworks; common/allocator.py)")
  results = {r.name: {"train": [], "decode": []} for r in runners}
  for r in runners:  # warm-up: compilation, allocator
    t0 = time.perf_counter()
    if a.only != "decode":
      r.train_step()
      r.sync()
    if a.only != "train":
      r.decode(enc, a.beam, a.new_tokens)
    print(f"# warm-up {r.name}: {time.perf_counter() - t0:.1f}s", flush=True)
  for trial in range(a.trials):
    order = runners[trial % len(runners):] + runners[:trial % len(runners)]
    for r in order:
      if a.only != "decode":
        r.sync()
        t0 = time.perf_counter()
        for _ in range(a.steps):
          r.train_step()
        loss = r.sync()
        results[r.name]["train"].append(a.steps * train_tokens / (time.perf_counter() - t0))
        assert np.isfinite(loss), (r.name, loss)
      if a.only != "train":
        t0 = time.perf_counter()
        r.decode(enc, a.beam, a.new_tokens)
        results[r.name]["decode"].append(enc.shape[0] * a.new_tokens
                                         / (time.perf_counter() - t0))
    print(f"# trial {trial + 1}: " + "; ".join(
        f"{n} " + " ".join(f"{k} {v[-1]:,.0f}" for k, v in d.items() if v)
        for n, d in results.items()), flush=True)
  print("\n| impl | precision | train tokens/s (median, min-max) | ours/HF | beam-4 decode "
        "new tokens/s (median, min-max) | ours/HF |")
  print("|---|---|---:|---:|---:|---:|")
  med = {n: {k: statistics.median(v) if v else float("nan") for k, v in d.items()}
         for n, d in results.items()}
  for n, d in results.items():
    impl, prec = n.split()
    ref = med[f"HF {prec}"]
    cell = lambda k: (f"{med[n][k]:,.0f} ({min(d[k]):,.0f}-{max(d[k]):,.0f})" if d[k] else "-")
    ratio = lambda k: f"{med[n][k] / ref[k]:.2f}x" if d[k] else "-"
    print(f"| {'ours (JAX/NNX)' if impl == 'ours' else 'HF T5ForConditionalGeneration'} | "
          f"{prec} | {cell('train')} | {ratio('train')} | {cell('decode')} | "
          f"{ratio('decode')} |")


if __name__ == "__main__":
  allocator.reexec_with_tcmalloc()
  main()
