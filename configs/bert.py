"""BERT presets: `python -m bert_flax.train --config=configs/bert.py:<preset>`.

tiny   - unit tests (seconds on a CPU)
demo   - the CPU demo: pretrains (pre-LN, no dropout) on the Debian corpus, 3,000 steps x 32
         rows x 128 tokens, then fine-tunes with `task=classify`
bench  - the benchmark shape (vocab 8192, 6 layers, d 512, 8 heads, d_ff 2048, seq 256, batch 8)
base   - BERT-Base (12 layers, d 768, 12 heads, d_ff 3072)
large  - BERT-Large (24 layers, d 1024, 16 heads, d_ff 4096)

`task` selects what runs: `pretrain` (masked LM, + NSP with `pretrain.nsp=True`), or
`classify` / `regress`: fine-tune the encoder loaded from `finetune.init_from` (a pretraining
work dir; empty = random init) with a fresh head, on the `classify` section's data, fields and
epochs, with the `finetune` section's learning rate and warmup, e.g.
  --config.task=classify --config.finetune.init_from=workdirs/bert_demo
  --config.classify.dataset=tfds:glue/sst2 --config.classify.text_field=sentence
  --config.classify.test_split=
"""

from ml_collections import ConfigDict

from common.config import base_config

# (num_layers, d_model, num_heads, d_ff)
_SIZES = {"base": (12, 768, 12, 3072), "large": (24, 1024, 16, 4096)}


def _model(num_layers, d_model, num_heads, d_ff, vocab_size, **kw) -> ConfigDict:
  return ConfigDict(dict(
      vocab_size=vocab_size, num_layers=num_layers, d_model=d_model, num_heads=num_heads,
      d_ff=d_ff, max_len=512, type_vocab_size=2, dropout_rate=0.1, attention_dropout_rate=0.1,
      norm_eps=1e-12, init_std=0.02, pre_norm=False, activation="gelu_exact", dtype="float32",
      scan_layers=True, remat_policy="none", attention_impl="auto") | kw)


def get_config(preset: str = "demo") -> ConfigDict:
  c = base_config()
  c.task = "pretrain"
  c.pretrain = ConfigDict(dict(
      mask_rate=0.15, mask_token_frac=0.8, random_token_frac=0.1,
      max_predictions=20,   # per sequence (packed row); BERT: 20 at seq 128, 80 at 512
      whole_word=False, nsp=False, packing_bins=0))  # open rows per batch row; 0: 4
  c.classify = ConfigDict(dict(
      dataset="sentiment", text_field="text", text_pair_field="",
      label_field="label", labels="",  # comma-separated; empty: the training split's values
      train_split="train", eval_split="validation", test_split="test",
      seq_len=64, batch_size=32, epochs=3))
  c.finetune.update(learning_rate=1e-4, schedule="linear", warmup_ratio=0.1)
  # Learning curves (`python -m bert_flax.transfer`): fine-tuning steps per label budget n are
  # clip(epochs x n / classify.batch_size, min_steps, max_steps).
  # adapt_steps: MLM steps on the text of the labelled training split (labels unused) between
  # pretraining and the "pretrained" cells (task-adaptive pretraining; 0: none).
  c.transfer = ConfigDict(dict(budgets="100,300,1000,3000,all", seeds="0,1,2", epochs=3,
                               min_steps=100, max_steps=380, adapt_steps=600))
  # BERT's AdamW: beta2 0.999, eps 1e-6, weight decay 0.01, linear warmup then linear decay.
  c.optimizer.update(b2=0.999, eps=1e-6, weight_decay=0.01, schedule="linear", end_lr_ratio=0.0)
  if preset == "tiny":
    c.model = _model(2, 64, 4, 128, 512, max_len=64)
    c.data.seq_len = 32
    c.pretrain.max_predictions = 6
    c.train.update(batch_size=8, num_steps=6, log_every=2, eval_every=6, eval_batches=2,
                   checkpoint_every=3, async_checkpoint=False)
    c.optimizer.update(learning_rate=1e-3, warmup_steps=2)
    c.classify.update(seq_len=32, batch_size=8, epochs=2)
    c.finetune.learning_rate = 1e-3
    c.transfer.update(budgets="16,all", seeds="0", min_steps=2, max_steps=4, adapt_steps=2)
  elif preset == "demo":
    # fp32: on CPUs without avx512_bf16 (as these VMs expose) bf16 compute is slower.
    # Pre-LN without dropout and 3,000 steps: the recipe that leaves the unigram plateau on 2
    # cores (validation MLM accuracy 0.15 at step 750, > 0.35 by step 2,500; docs/results.md).
    c.model = _model(4, 256, 4, 1024, 8192, scan_layers=False, pre_norm=True, dropout_rate=0.0,
                     attention_dropout_rate=0.0)
    c.data.seq_len = 128
    c.train.update(batch_size=32, num_steps=3000, log_every=50, eval_every=250, eval_batches=10,
                   checkpoint_every=250)
    c.optimizer.update(learning_rate=1e-3, warmup_steps=100, b2=0.98)
    c.finetune.learning_rate = 3e-4  # a 4-layer encoder fine-tunes faster than BERT-Base's 1e-4
  elif preset == "bench":
    c.model = _model(6, 512, 8, 2048, 8192, dropout_rate=0.0, attention_dropout_rate=0.0,
                     scan_layers=False)
    c.data.seq_len = 256
    c.pretrain.max_predictions = 40
    c.train.update(batch_size=8, num_steps=100)
  elif preset in _SIZES:
    layers, d, heads, ff = _SIZES[preset]
    c.model = _model(layers, d, heads, ff, 30592, dtype="bfloat16")  # 30522 padded to 128
    c.data.seq_len = 128
    c.train.update(batch_size=256, num_steps=1_000_000, log_every=100, eval_every=10_000,
                   checkpoint_every=10_000)
    c.optimizer.update(learning_rate=1e-4, warmup_steps=10_000)
    c.classify.seq_len = 128
    c.finetune.learning_rate = 2e-5
    c.mesh.update(data=1, fsdp=-1, tensor=1)
  else:
    raise ValueError(f"unknown bert preset {preset!r}; valid: tiny, demo, bench, "
                     f"{', '.join(_SIZES)}")
  return c
