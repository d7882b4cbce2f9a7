"""GPT pretraining: `python -m gpt_flax.train --config=configs/gpt.py:<preset> --workdir=DIR`.

Trains (or resumes) a causal LM on packed rows of the configured dataset, reports validation
loss and perplexity, and prints sampled continuations of `config.sample.prompts`.
"""

from __future__ import annotations

from common import entry, trainer
from common.data import workers
from common.data.pipeline import compile_loss_regex, lm_dataset
from common.data.records import get_text
from common.rundir import RunDir
from gpt_flax.generate import encode_prompt, generate_text
from gpt_flax.model import GPTModel


def run(cfg, workdir: str, *, prepare: bool = False) -> trainer.TrainResult:
  """Pretrain, evaluate and sample; returns the trainer's result (used by tests and scripts)."""
  d = cfg.data
  if d.seq_len > cfg.model.max_len:
    raise ValueError(f"data.seq_len={d.seq_len} exceeds model.max_len={cfg.model.max_len} "
                     "positions")
  if prepare:
    entry.prepare_data(cfg)
  train_source = entry.open_data(cfg, d.train_split)  # a missing dataset fails before anything
  if d.loss_regex:
    compile_loss_regex(d.loss_regex)
  vocab = entry.run_vocab(cfg)

  def make_iter(split: str, *, train: bool):
    source = train_source if split == d.train_split else entry.open_data(cfg, split)
    make = lambda lanes: lm_dataset(
        source, vocab, text_field=d.text_field, seq_len=d.seq_len,
        batch_size=cfg.train.batch_size, seed=cfg.seed, shuffle=train and d.shuffle,
        num_epochs=None if train else 1, loss_regex=d.loss_regex,
        dataset_name=f"{d.dataset}:{split}", lanes=lanes)
    return workers.parallel(make, cfg.train.batch_size, d.num_workers if train else 0)

  result = trainer.train(
      GPTModel(cfg), cfg, workdir,
      make_train_iter=lambda: make_iter(d.train_split, train=True),
      make_eval_iter=lambda: make_iter(d.eval_split, train=False),
      init_from=cfg.finetune.init_from or None,
      on_start=lambda: RunDir(workdir).record(cfg, vocab),
      start_metrics=entry.skipped_records(train_source))
  ev = result.eval_metrics
  print(f"validation ({d.eval_split}): loss {ev['loss']:.4f}, perplexity {ev['perplexity']:.2f}, "
        f"token accuracy {ev['correct']:.4f} over {int(ev['tokens'])} tokens", flush=True)
  s = cfg.sample
  prompts = list(s.prompts) or validation_prompts(entry.open_data(cfg, d.eval_split),
                                                  d.text_field, s.num_prompts)
  longest = max((len(encode_prompt(vocab, p)) for p in prompts), default=0)
  new_tokens = min(s.max_new_tokens, cfg.model.max_len - longest)  # what fits the context
  if prompts and new_tokens > 0:
    texts = generate_text(result.setup.graphdef, result.state["params"], vocab, prompts,
                          max_len=cfg.model.max_len, max_new_tokens=new_tokens,
                          seed=cfg.seed, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p)
    for prompt, text in zip(prompts, texts):
      print(f"sample | {prompt} -> {text}", flush=True)
  return result


def validation_prompts(source, text_field: str, n: int, words: int = 4) -> list[str]:
  """The first words of the first `n` validation documents: samples continue the run's own
  kind of text (prompts written for one corpus mean little to a model of another)."""
  out = []
  for i in range(min(n, len(source))):
    head = " ".join(get_text(source[i], text_field).split()[:words])
    if head:
      out.append(head)
  return out


cli_main = entry.make_cli(run, "gpt", "demo")


if __name__ == "__main__":
  cli_main()
