"""T5 pretraining and text-to-text fine-tuning, configured entirely by flags.

  python -m t5x_lite.train --config=configs/t5.py:<preset> --workdir=DIR        # span corruption
  python -m t5x_lite.train --config=configs/t5.py:<preset> --config.task=summarize \\
      --config.init_checkpoint=PRETRAINED_DIR --workdir=DIR \\
      [--config.data.dataset=tfds:xsum|jsonl:PATH/{split}.jsonl|debian
       --config.data.input_field=F --config.data.target_field=F --config.data.prefix='summarize: '
       --config.data.max_input_len=N --config.data.max_target_len=N]

Fine-tuning loads the pretrained params and continues its step count (as T5X does), so
`train.num_steps` counts the pretraining steps too; its optimizer defaults to T5's fine-tuning
recipe (constant lr 1e-3, no warmup: `finetune_schedule`, see configs/t5.py) unless a flag sets
it. ROUGE on the first `rouge.num_examples` validation examples is computed at every evaluation.
"""

from __future__ import annotations


import orbax.checkpoint as ocp

from common import entry, train_state, trainer
from common.checkpoint import resolve_checkpoint
from common.data.sources import open_source
from t5x_lite import tasks
from t5x_lite.decode import predict_ids
from t5x_lite.model import T5Model
from t5x_lite.rouge import rouge
from t5x_lite.span_corruption import check_sentinels, random_spans_helper


def checkpoint_identity(path: str) -> dict:
  """The model identity recorded with a checkpoint (family and network config)."""
  root, step = resolve_checkpoint(path)
  with ocp.CheckpointManager(root) as mgr:
    meta = mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
  return meta.get("identity", {})


def check_init_checkpoint(cfg) -> str:
  """The checkpoint must be a T5 one; returns its attention-logit scaling."""
  identity = checkpoint_identity(cfg.init_checkpoint)
  family = identity.get("family")
  if family != T5Model.name:
    raise ValueError(f"init_checkpoint {cfg.init_checkpoint} holds a {family!r} model, not a "
                     "T5 model; fine-tune from a checkpoint written by t5x_lite.train")
  scaling = identity["model"]["attn_logit_scaling"]
  wanted = cfg.model.attn_logit_scaling
  if wanted not in ("auto", scaling):
    raise ValueError(f"init_checkpoint was trained with model.attn_logit_scaling={scaling!r}; "
                     f"fine-tuning with {wanted!r} would change its attention; use 'auto'")
  return scaling


def resolve_schedule(cfg):
  """Fine-tuning (task != pretrain): each optimizer.{schedule,learning_rate,warmup_steps}
  still at the preset's pretraining value (`pretrain_schedule`) takes `finetune_schedule`'s, so
  a fine-tuning run does not inherit a 10k-step warmup; a value set by flag wins. In place
  (the work dir's config.json records what ran); returns `cfg`."""
  if cfg.task == "pretrain" or "finetune_schedule" not in cfg:
    return cfg
  pre, fine = cfg.get("pretrain_schedule") or {}, cfg.finetune_schedule
  for key in fine:
    if key in pre and cfg.optimizer[key] == pre[key]:
      cfg.optimizer[key] = fine[key]
  o = cfg.optimizer
  print(f"fine-tuning schedule: {o.schedule}, learning rate {o.learning_rate:g}, warmup "
        f"{o.warmup_steps} steps", flush=True)
  return cfg


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
  resolve_schedule(cfg)
  if prepare:
    entry.prepare_data(cfg)
  d = cfg.data
  source = open_source(d.dataset, d.train_split, d.data_dir)  # a missing dataset fails first
  if cfg.task != "pretrain":
    tasks.check_fields(source[0], d)
  vocab = entry.load_checked_vocab(cfg, extra_ids=d.extra_ids)
  if cfg.task == "pretrain":
    check_sentinels(vocab, random_spans_helper(d.max_input_len)[0])
  scaling = check_init_checkpoint(cfg) if cfg.init_checkpoint else None
  input_len, target_len = tasks.lengths(cfg)
  model = T5Model(cfg, checkpoint_scaling=scaling, input_len=input_len, target_len=target_len)
  use_rouge = cfg.task != "pretrain" and cfg.rouge.num_examples != 0
  result = trainer.train(
      model, cfg, workdir,
      make_train_iter=tasks.make_iter_fn(cfg, vocab, d.train_split, train=True),
      make_eval_iter=tasks.make_iter_fn(cfg, vocab, d.eval_split, train=False),
      init_from=cfg.init_checkpoint or None,
      on_start=lambda: entry.record_run(cfg, workdir, vocab),
      extra_eval=rouge_eval(cfg, vocab) if use_rouge else None)
  ev = result.eval_metrics
  line = (f"validation ({d.eval_split}): loss {ev['loss']:.4f}, perplexity "
          f"{ev['perplexity']:.2f}, token accuracy {ev['correct']:.4f}")
  line += "".join(f", {k} {ev[k]:.2f}" for k in ("rouge1", "rouge2", "rougeLsum") if k in ev)
  print(line, flush=True)
  return result


cli = entry.make_cli(run, "t5", "demo")


if __name__ == "__main__":
  cli()
