"""T5 presets: `python -m t5x_lite.train --config=configs/t5.py:<preset>`.

tiny              unit tests (seconds on a CPU)
demo              the CPU demo: span-corruption pretraining on the Debian corpus (3,000 steps,
                  ~43 min on 2 cores), then description -> synopsis fine-tuning
bench             the benchmark shape (vocab 8192, 6+6 layers, d_model 512, 8 heads, d_ff 1024
                  gated-GELU, inputs 256, targets 64, batch 8)
small base large xl xxl      T5.1.1 (gated-GELU, untied logits, no pretraining dropout)
v1_0_small v1_0_base         T5 1.0 (ReLU, logits tied to the embedding, dropout 0.1)

Published presets use vocab 32128 (32000 SentencePiece pieces + 100 sentinels, padded to a
multiple of 128), Adafactor with T5's schedules: pretraining lr 0.01 warmed up over 10k steps
then rsqrt (the `optimizer` fields; tiny and demo warm up shorter); fine-tuning
(`--config.task=summarize`, from `--config.finetune.init_from=PRETRAINED`) constant lr 1e-3,
no warmup, dropout 0.1 (the `finetune` fields, e.g. `--config.finetune.learning_rate=5e-4`).
"""

from ml_collections import ConfigDict

from common.config import base_config

# (encoder layers, decoder layers, d_model, heads, head_dim, d_ff)
_V1_1 = {"small": (8, 8, 512, 6, 64, 1024), "base": (12, 12, 768, 12, 64, 2048),
         "large": (24, 24, 1024, 16, 64, 2816), "xl": (24, 24, 2048, 32, 64, 5120),
         "xxl": (24, 24, 4096, 64, 64, 10240)}
_V1_0 = {"v1_0_small": (6, 6, 512, 8, 64, 2048), "v1_0_base": (12, 12, 768, 12, 64, 3072)}
PRESETS = ("tiny", "demo", "bench") + tuple(_V1_1) + tuple(_V1_0)


def _model(enc, dec, d_model, heads, head_dim, d_ff, vocab_size, **kw) -> ConfigDict:
  return ConfigDict(dict(
      vocab_size=vocab_size, num_encoder_layers=enc, num_decoder_layers=dec, d_model=d_model,
      num_heads=heads, head_dim=head_dim, d_ff=d_ff, activation="gated-gelu",
      logits_via_embedding=False, dropout_rate=0.0, relpos_buckets=32, relpos_max_distance=128,
      norm_eps=1e-6, attn_logit_scaling="auto", dtype="float32", scan_layers=True,
      remat_policy="none") | kw)


def get_config(preset: str = "demo") -> ConfigDict:
  c = base_config()
  c.task = "pretrain"           # pretrain (span corruption) | summarize (text-to-text)
  c.data.update(dict(
      input_field="", target_field="",  # "" = the dataset's known fields (debian: text -> synopsis)
      prefix="summarize: ", max_input_len=512, max_target_len=114, truncate_inputs=True,
      truncate_targets=False, pack=True, extra_ids=100, test_split="test"))
  c.rouge = ConfigDict(dict(num_examples=200, batch_size=32, beam_size=1, alpha=0.6,
                            max_decode_len=64))
  c.infer = ConfigDict(dict(beam_size=4, alpha=0.6, temperature=0.0, top_k=0, top_p=1.0,
                            max_decode_len=64, batch_size=32))
  c.loss.z_loss = 1e-4
  c.optimizer.update(name="adafactor", learning_rate=0.01, warmup_steps=10_000,
                     schedule="rsqrt", weight_decay=0.0, clip_norm=0.0)
  # T5X's fine-tuning runs: constant lr 1e-3, and dropout 0.1 on models pretrained without.
  c.finetune.update(schedule="constant", learning_rate=1e-3, warmup_ratio=0.0, dropout_rate=0.1)
  # Learning curves (`python -m t5x_lite.transfer`): fine-tuning steps per label budget n are
  # clip(epochs x n / train.batch_size, min_steps, max_steps); beam search (the `infer`
  # section) on the first test_examples test inputs (0 = all).
  c.transfer = ConfigDict(dict(budgets="100,300,1000,3000,all", seeds="0,1", epochs=3,
                               min_steps=100, max_steps=400, test_examples=500))
  if preset == "tiny":
    c.model = _model(2, 2, 64, 4, 16, 128, 512, dtype="float32")
    c.data.update(max_input_len=32, max_target_len=16, extra_ids=100)
    c.train.update(batch_size=8, num_steps=6, log_every=2, eval_every=6, eval_batches=2,
                   checkpoint_every=3, async_checkpoint=False)
    c.optimizer.update(learning_rate=1e-2, warmup_steps=2, adafactor_min_dim_to_factor=32)
    c.rouge.update(num_examples=8, batch_size=8, max_decode_len=8)
    c.infer.update(beam_size=2, max_decode_len=8, batch_size=8)
    c.transfer.update(budgets="16,all", seeds="0", min_steps=2, max_steps=4, test_examples=8)
  elif preset == "demo":
    # fp32: on CPUs without avx512_bf16 (these VMs) XLA's bf16 matmuls are slower than fp32.
    c.model = _model(4, 4, 256, 4, 64, 768, 8192, dtype="float32", scan_layers=False)
    c.data.update(max_input_len=128, max_target_len=32)
    c.train.update(batch_size=32, num_steps=3000, log_every=25, eval_every=300, eval_batches=10,
                   checkpoint_every=250)
    c.optimizer.update(learning_rate=0.01, warmup_steps=100)
    # A 4-layer model fine-tuned at T5's 1e-3 for a few hundred steps stays near the unigram
    # prior and beam search returns a few generic synopses; 3e-3 for 5 epochs fits the pairs
    # (docs/results.md, the T5 learning curve).
    c.finetune.learning_rate = 3e-3
    c.transfer.epochs = 5
    c.rouge.update(num_examples=256, batch_size=64, max_decode_len=32)
    c.infer.update(max_decode_len=32)
  elif preset == "bench":
    c.model = _model(6, 6, 512, 8, 64, 1024, 8192, scan_layers=False)
    c.data.update(max_input_len=256, max_target_len=64)
    c.train.update(batch_size=8, num_steps=100)
  elif preset in _V1_1:
    c.model = _model(*_V1_1[preset], 32128, dtype="bfloat16")
    c.data.update(max_input_len=512, max_target_len=114)
    c.train.update(batch_size=128, num_steps=524_288, log_every=100, eval_every=5000,
                   checkpoint_every=5000)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
  elif preset in _V1_0:
    c.model = _model(*_V1_0[preset], 32128, dtype="bfloat16", activation="relu",
                     logits_via_embedding=True, dropout_rate=0.1)
    c.data.update(max_input_len=512, max_target_len=114)
    c.train.update(batch_size=128, num_steps=524_288, log_every=100, eval_every=5000,
                   checkpoint_every=5000)
    c.mesh.update(data=1, fsdp=-1, tensor=1)
  else:
    raise ValueError(f"unknown t5 preset {preset!r}; valid: {', '.join(PRESETS)}")
  return c
