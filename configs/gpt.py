"""GPT presets: `python -m gpt_flax.train --config=configs/gpt.py:<preset>`.

tiny   - unit tests (seconds on a CPU)
demo   - the quickstart's job (quickstart.sh): pretrains on the Debian corpus on 2 CPU cores
bench  - the benchmark shape (vocab 8192, 6 layers, d 512, 8 heads, seq 256, batch 8)
124m / 350m / 774m / 1.5b - GPT-2 shapes (vocab 50304 = 50257 padded to a multiple of 128)

`--config.finetune.init_from=DIR` starts from another run's (or an imported GPT-2's) weights.
"""

from ml_collections import ConfigDict

from common.config import base_config

# GPT-2 shapes: (num_layers, d_model, num_heads)
_GPT2 = {"124m": (12, 768, 12), "350m": (24, 1024, 16), "774m": (36, 1280, 20),
         "1.5b": (48, 1600, 25)}


def _model(num_layers, d_model, num_heads, vocab_size, max_len, **kw) -> ConfigDict:
  return ConfigDict(dict(vocab_size=vocab_size, max_len=max_len, num_layers=num_layers,
                         d_model=d_model, num_heads=num_heads, d_ff=4 * d_model,
                         dropout_rate=0.0, norm_eps=1e-5, dtype="float32", scan_layers=True,
                         remat_policy="none", attention_impl="auto") | kw)


def get_config(preset: str = "demo") -> ConfigDict:
  c = base_config()
  # Loss only on text this regex matches (answers of a prompt format; "" = every token).
  c.data.loss_regex = ""
  # Sampled continuations printed after training: of `prompts`, or (none given) of the first
  # words of `num_prompts` validation documents.
  c.sample = ConfigDict(dict(prompts=[], num_prompts=3, max_new_tokens=40, temperature=0.8,
                             top_k=40, top_p=1.0))
  if preset == "tiny":
    c.model = _model(2, 64, 4, 512, 64)
    c.data.seq_len = 32
    c.train.update(batch_size=8, num_steps=6, log_every=2, eval_every=6, eval_batches=2,
                   checkpoint_every=3, async_checkpoint=False)
    c.optimizer.update(learning_rate=1e-3, warmup_steps=2)
    c.sample.max_new_tokens = 8
  elif preset == "demo":
    # fp32: bf16 is slower on CPUs without avx512_bf16 (docs/benchmarks.md, bf16 on CPU).
    c.model = _model(4, 256, 4, 8192, 128, scan_layers=False)
    c.data.seq_len = 128
    c.train.update(batch_size=16, num_steps=800, log_every=50, eval_every=400, eval_batches=20,
                   checkpoint_every=200)
    c.optimizer.update(learning_rate=2e-3, warmup_steps=50, weight_decay=0.1)
  elif preset == "bench":
    c.model = _model(6, 512, 8, 8192, 256, scan_layers=False)
    c.data.seq_len = 256
    c.train.update(batch_size=8, num_steps=100)
  elif preset in _GPT2:
    layers, d, heads = _GPT2[preset]
    c.model = _model(layers, d, heads, 50304, 1024, dtype="bfloat16",
                     remat_policy="dots_no_batch")
    c.data.seq_len = 1024
    c.train.update(batch_size=512, num_steps=600_000, log_every=100, eval_every=2000,
                   checkpoint_every=2000)
    c.optimizer.update(learning_rate=6e-4, warmup_steps=2000, weight_decay=0.1)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
  else:
    raise ValueError(f"unknown gpt preset {preset!r}; valid: tiny, demo, bench, "
                     f"{', '.join(_GPT2)}")
  return c
