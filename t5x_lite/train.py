"""T5 pretraining and text-to-text fine-tuning, configured entirely by flags.

  python -m t5x_lite.train --config=configs/t5.py:<preset> --workdir=DIR        # span corruption
  python -m t5x_lite.train --config=configs/t5.py:<preset> --config.task=summarize \\
      --config.finetune.init_from=PRETRAINED_DIR --workdir=DIR \\
      [--config.data.dataset=tfds:xsum|jsonl:PATH/{split}.jsonl|debian
       --config.data.input_field=F --config.data.target_field=F --config.data.prefix='summarize: '
       --config.data.max_input_len=N --config.data.max_target_len=N]

Fine-tuning loads the pretrained params (and tokenizer) and trains `train.num_steps` steps
with the `finetune` section's schedule (T5's recipe: constant lr 1e-3, no warmup; see
configs/t5.py). ROUGE on the first `rouge.num_examples` validation examples is computed at
every evaluation.
"""

from __future__ import annotations

from common import config as config_lib
from common import entry, train_state, trainer
from common.checkpoint_reader import read_meta
from common.rundir import RunDir
from t5x_lite import tasks
from t5x_lite.decode import predict_ids
from t5x_lite.model import T5Model
from common.rouge import rouge
from t5x_lite.span_corruption import check_sentinels, random_spans_helper


def init_scaling(cfg) -> str | None:
  """The attention-logit scaling of the `finetune.init_from` run ('auto' follows it)."""
  if not cfg.finetune.init_from:
    return None
  identity = read_meta(cfg.finetune.init_from).get("identity", {})
  if identity.get("family") != T5Model.name:
    raise ValueError(f"finetune.init_from {cfg.finetune.init_from} holds a "
                     f"{identity.get('family')!r} model, not a T5 model; fine-tune from a "
                     "checkpoint written by t5x_lite.train")
  scaling = identity["model"]["attn_logit_scaling"]
  wanted = cfg.model.attn_logit_scaling
  if wanted not in ("auto", scaling):
    raise ValueError(f"finetune.init_from was trained with model.attn_logit_scaling="
                     f"{scaling!r}; fine-tuning with {wanted!r} would change its attention; use "
                     "'auto'")
  return scaling


def rouge_eval(cfg, vocab):
  """trainer extra_eval hook: decode validation inputs and score them against the targets."""
  r = cfg.rouge
  _, ids, targets = tasks.text_examples(cfg, vocab, cfg.data.eval_split, r.num_examples)

  def extra_eval(step: int, state: dict, setup: train_state.Setup) -> dict[str, float]:
    outs = predict_ids(setup.graphdef, state["params"], ids, input_len=cfg.data.max_input_len,
                       max_decode_len=r.max_decode_len, batch_size=r.batch_size,
                       eos_id=vocab.eos_id, beam_size=r.beam_size, alpha=r.alpha,
                       vocab_size=vocab.vocab_size, partitioner=setup.partitioner)
    scores = rouge([vocab.decode(o) for o in outs], targets)
    print(f"step {step:6d} | ROUGE on {len(ids)} {cfg.data.eval_split} examples: "
          + ", ".join(f"{k} {v:.2f}" for k, v in scores.items()), flush=True)
    return scores
  return extra_eval


def run(cfg, workdir: str, *, prepare: bool = False) -> trainer.TrainResult:
  """Pretrain or fine-tune and evaluate; returns the trainer's result."""
  tasks.check_task(cfg)
  cfg = config_lib.resolve_finetune(cfg)
  scaling = init_scaling(cfg)  # a checkpoint of another family fails first
  if cfg.task != "pretrain":
    o = cfg.optimizer
    print(f"fine-tuning schedule: {o.schedule}, learning rate {o.learning_rate:g}, warmup "
          f"{o.warmup_steps} steps", flush=True)
  if prepare:
    entry.prepare_data(cfg, extra_ids=cfg.data.extra_ids)
  d = cfg.data
  source = entry.open_data(cfg, d.train_split)  # a missing dataset fails first
  if cfg.task != "pretrain":
    tasks.check_fields(source[0], d)
  vocab = entry.run_vocab(cfg, extra_ids=d.extra_ids)
  if cfg.task == "pretrain":
    check_sentinels(vocab, random_spans_helper(d.max_input_len)[0])
  input_len, target_len = tasks.lengths(cfg)
  model = T5Model(cfg, checkpoint_scaling=scaling, input_len=input_len, target_len=target_len)
  use_rouge = cfg.task != "pretrain" and cfg.rouge.num_examples != 0
  result = trainer.train(
      model, cfg, workdir,
      make_train_iter=tasks.make_iter_fn(cfg, vocab, d.train_split, train=True),
      make_eval_iter=tasks.make_iter_fn(cfg, vocab, d.eval_split, train=False),
      init_from=cfg.finetune.init_from or None,
      on_start=lambda: RunDir(workdir).record(cfg, vocab),
      start_metrics=entry.skipped_records(source),
      extra_eval=rouge_eval(cfg, vocab) if use_rouge else None)
  ev = result.eval_metrics
  line = (f"validation ({d.eval_split}): loss {ev['loss']:.4f}, perplexity "
          f"{ev['perplexity']:.2f}, token accuracy {ev['correct']:.4f}")
  line += "".join(f", {k} {ev[k]:.2f}" for k in ("rouge1", "rouge2", "rougeLsum") if k in ev)
  print(line, flush=True)
  return result


cli_main = entry.make_cli(run, "t5", "demo")


if __name__ == "__main__":
  cli_main()
