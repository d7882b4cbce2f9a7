"""GPT pretraining: `python -m gpt_flax.train --config=configs/gpt.py:<preset> --workdir=DIR`.

Trains (or resumes) a causal LM on packed rows of the configured dataset, reports validation
loss and perplexity, and prints sampled continuations of `config.sample.prompts`.
"""

from __future__ import annotations

from common import entry, trainer
from common.data.pipeline import compile_loss_regex, lm_dataset
from common.data.sources import open_source
from gpt_flax.generate import generate_text
from gpt_flax.model import GPTModel


def run(cfg, workdir: str, *, prepare: bool = False) -> trainer.TrainResult:
  """Pretrain, evaluate and sample; returns the trainer's result (used by tests and scripts)."""
  if prepare:
    entry.prepare_data(cfg)
  d = cfg.data
  open_source(d.dataset, d.train_split, d.data_dir)  # a missing dataset fails before anything
  if d.loss_regex:
    compile_loss_regex(d.loss_regex)
  vocab = entry.load_checked_vocab(cfg)

  def make_iter(split: str, *, train: bool):
    source = open_source(d.dataset, split, d.data_dir)
    ds = lm_dataset(source, vocab, text_field=d.text_field, seq_len=d.seq_len,
                    batch_size=cfg.train.batch_size, seed=cfg.seed, shuffle=train and d.shuffle,
                    num_epochs=None if train else 1, loss_regex=d.loss_regex)
    return iter(ds)

  result = trainer.train(
      GPTModel(cfg), cfg, workdir,
      make_train_iter=lambda: make_iter(d.train_split, train=True),
      make_eval_iter=lambda: make_iter(d.eval_split, train=False),
      init_from=cfg.init_checkpoint or None,
      on_start=lambda: entry.record_run(cfg, workdir, vocab))
  ev = result.eval_metrics
  print(f"validation ({d.eval_split}): loss {ev['loss']:.4f}, perplexity {ev['perplexity']:.2f}, "
        f"token accuracy {ev['correct']:.4f} over {int(ev['tokens'])} tokens", flush=True)
  s = cfg.sample
  if s.prompts:
    texts = generate_text(result.setup.graphdef, result.state["params"], vocab, list(s.prompts),
                          max_len=cfg.model.max_len, max_new_tokens=s.max_new_tokens,
                          seed=cfg.seed, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
    for prompt, text in zip(s.prompts, texts):
      print(f"sample | {prompt} -> {text}", flush=True)
  return result


cli = entry.make_cli(run, "gpt", "demo")


if __name__ == "__main__":
  cli()
