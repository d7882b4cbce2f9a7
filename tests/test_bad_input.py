"""Bad input across every command: each case exits with status 2, prints exactly one `error:`
line that names the problem (checked against a pattern), and leaves its work dir as it found
it (absent stays absent; an existing run is byte-for-byte unchanged). The commands run in
forks of one interpreter (tests/cli_cases.py), one JAX start for the whole table."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests import fakes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GPT, T5, BERT = "configs/gpt.py:tiny", "configs/t5.py:tiny", "configs/bert.py:tiny"


def _tree(path: str) -> dict[str, tuple[int, int]] | None:
  """Every file under `path` with its size and mtime (None when `path` does not exist)."""
  if not os.path.lexists(path):
    return None
  if not os.path.isdir(path):
    return {"": (os.path.getsize(path), os.stat(path).st_mtime_ns)}
  out = {}
  for d, dirs, files in os.walk(path):
    for name in dirs + files:
      p = os.path.join(d, name)
      out[os.path.relpath(p, path)] = (os.path.getsize(p), os.stat(p).st_mtime_ns)
  return out


def _train_run(root, tokenizer: str, workdir: str) -> None:
  from configs.gpt import get_config  # pylint: disable=g-import-not-at-top
  from gpt_flax import train  # pylint: disable=g-import-not-at-top
  cfg = get_config("tiny")
  cfg.data.update(dataset=f"jsonl:{root}/{{split}}.jsonl", tokenizer=tokenizer, text_field="body",
                  data_dir=str(root))
  cfg.train.update(num_steps=2, checkpoint_every=2, eval_every=2)
  cfg.sample.num_prompts = 0
  train.run(cfg, workdir)


def build(root) -> list[dict]:
  """The inputs the cases need under `root`, and the cases: id, module, argv, the work dir
  that must be left as found, and the pattern the one error line must match."""
  root = str(root)
  c = os.path.join(root, "corpus")
  os.makedirs(c)
  tok = fakes.word_corpus(c, (("train", 120), ("validation", 20)))
  data = [f"--config.data.dataset=jsonl:{c}/{{split}}.jsonl", "--config.data.text_field=body",
          f"--config.data.tokenizer={tok}", f"--config.data.data_dir={c}",
          "--config.train.num_steps=2", "--config.sample.num_prompts=0"]
  for kind, line in (("bad_utf8", b'{"body": "caf\xe9"}\n'), ("bad_json", b'{"body": "x"\n'),
                     ("not_object", b'["body"]\n')):
    os.makedirs(os.path.join(root, kind))
    for split in ("train", "validation"):
      with open(os.path.join(root, kind, f"{split}.jsonl"), "wb") as f:
        f.write(b'{"body": "fine words here"}\n' + line)
  truncated = os.path.join(root, "truncated.model")
  with open(tok, "rb") as src, open(truncated, "wb") as dst:
    dst.write(src.read()[:2000])
  a_file = os.path.join(root, "a_file")
  open(a_file, "w").close()
  run = os.path.join(root, "run")
  _train_run(c, tok, run)
  bad_meta = os.path.join(root, "run_bad_meta")
  shutil.copytree(run, bad_meta)
  with open(os.path.join(bad_meta, "checkpoints", "2", "meta", "metadata"), "w") as f:
    f.write("{not json")
  other_run = os.path.join(root, "run_other_data")
  shutil.copytree(run, other_run)
  empty = os.path.join(root, "empty")
  os.makedirs(empty)
  hf_bad = os.path.join(root, "hf_bad")
  os.makedirs(hf_bad)
  with open(os.path.join(hf_bad, "config.json"), "w") as f:
    f.write('{"model_type": "gpt2",')
  no_field = os.path.join(root, "preds.jsonl")
  fakes.write_jsonl(no_field, [{"prediction": "a b", "reference": "a"}])
  new = lambda name: os.path.join(root, "new", name)

  def train(cid, module, preset, extra, pattern, workdir=None):
    wd = workdir or new(cid)
    return dict(id=cid, module=module, argv=[f"--config={preset}", f"--workdir={wd}"] + extra,
                workdir=wd, error=pattern)

  gpt = lambda cid, extra, pattern, **kw: train(cid, "gpt_flax.train", GPT, data + extra,
                                               pattern, **kw)
  bert_data = [a.replace("num_steps=2", "num_steps=1") for a in data[:-1]]
  t5_data = [f"--config.data.dataset=jsonl:{c}/{{split}}.jsonl",
             f"--config.data.tokenizer={tok}", f"--config.data.data_dir={c}"]
  cases = [
      gpt("unknown_config_key", ["--config.train.num_stepz=3"],
          r"num_stepz.*valid"),
      gpt("config_value_not_a_number", ["--config.train.num_steps=abc"],
          r"--config.train.num_steps=abc: invalid literal"),
      gpt("unknown_flag", ["--num_steps=3"], r"Unknown command line flag 'num_steps'"),
      gpt("positional_argument", ["oops"], r"unexpected arguments \['oops'\]"),
      train("unknown_preset", "gpt_flax.train", "configs/gpt.py:huge", data,
            r"unknown gpt preset 'huge'.*valid"),
      gpt("negative_learning_rate", ["--config.optimizer.learning_rate=-1"],
          r"optimizer.learning_rate.*-1"),
      gpt("unknown_dtype", ["--config.model.dtype=float8"], r"model.dtype.*float8.*bfloat16"),
      gpt("dropout_above_one", ["--config.model.dropout_rate=1.5"], r"dropout_rate.*1.5"),
      gpt("zero_batch", ["--config.train.batch_size=0"], r"train.batch_size"),
      gpt("keep_no_checkpoints", ["--config.train.keep_checkpoints=0"], r"keep_checkpoints"),
      gpt("seq_len_above_max_len", ["--config.data.seq_len=999"],
          r"data.seq_len=999 .*model.max_len"),
      dict(id="no_workdir", module="gpt_flax.train", argv=[f"--config={GPT}"] + data,
           workdir=new("no_workdir"), error=r"--workdir is required"),
      gpt("workdir_is_a_file", [], r"a_file", workdir=a_file),
      gpt("workdir_not_writable", [], r"/proc/flax_pretrain_wd", workdir="/proc/flax_pretrain_wd"),
      gpt("unknown_dataset_spec", ["--config.data.dataset=hub:c4"],
          r"unknown dataset spec 'hub:c4'; valid forms"),
      gpt("no_data_files", [f"--config.data.dataset=jsonl:{root}/nowhere/{{split}}.jsonl"],
          r"no files match jsonl:"),
      gpt("not_utf8_line", [f"--config.data.dataset=jsonl:{root}/bad_utf8/{{split}}.jsonl"],
          r"bad_utf8/train.jsonl:2: not UTF-8 .*skip_bad_records"),
      gpt("invalid_json_line", [f"--config.data.dataset=jsonl:{root}/bad_json/{{split}}.jsonl"],
          r"bad_json/train.jsonl:2: invalid JSON"),
      gpt("json_line_not_an_object",
          [f"--config.data.dataset=jsonl:{root}/not_object/{{split}}.jsonl"],
          r"not_object/train.jsonl:2: expected a JSON object, got list"),
      gpt("missing_text_field", ["--config.data.text_field=text"],
          r"no text field 'text'; fields present: \['body'\]; set --config.data.text_field"),
      gpt("bad_split_slice", ["--config.data.eval_split=validation[5]"],
          r"data.eval_split: split 'validation\[5\]': expected NAME or NAME\[START:STOP\]"),
      gpt("no_tokenizer", ["--config.data.tokenizer="],
          r"no tokenizer for dataset .*--config.data.tokenizer=PATH.model, or --prepare"),
      gpt("truncated_tokenizer", [f"--config.data.tokenizer={truncated}"],
          r"truncated.model"),
      gpt("tokenizer_larger_than_vocab", ["--config.model.vocab_size=256"],
          r"has \d+ ids but model.vocab_size is 256"),
      gpt("init_from_missing", [f"--config.finetune.init_from={root}/nowhere"],
          r"finetune.init_from: .*/nowhere does not exist"),
      gpt("resume_with_other_dataset", [f"--config.data.dataset=text:{c}/{{split}}.jsonl",
                                        "--config.train.num_steps=4"],
          r"data.restart=True", workdir=other_run),
      gpt("checkpoint_meta_malformed", ["--config.train.num_steps=4"],
          r"run_bad_meta/checkpoints/2/meta/metadata", workdir=bad_meta),
      train("t5_unknown_task", "t5x_lite.train", T5, t5_data + ["--config.task=translate"],
            r"task 'translate'.*valid"),
      train("t5_negative_warmup", "t5x_lite.train", T5,
            t5_data + ["--config.optimizer.warmup_steps=-5"], r"warmup_steps"),
      train("bert_seq_len_above_max_len", "bert_flax.train", BERT,
            bert_data + ["--config.data.seq_len=999"], r"data.seq_len=999 exceeds model.max_len"),
      train("bert_classify_reads_classify_section", "bert_flax.train", BERT,
            bert_data + ["--config.task=classify"], r"task=classify reads its examples from "
            r"classify.dataset .*--config.classify.dataset="),
      dict(id="generate_no_checkpoint", module="gpt_flax.generate",
           argv=[f"--workdir={empty}", "--prompt=hello"], workdir=empty, error=r"empty"),
      dict(id="generate_negative_temperature", module="gpt_flax.generate",
           argv=[f"--workdir={run}", "--prompt=hello", "--temperature=-1"], workdir=run,
           error=r"temperature"),
      dict(id="generate_prompts_file_missing", module="gpt_flax.generate",
           argv=[f"--workdir={run}", f"--prompts_file={root}/nowhere.txt"], workdir=run,
           error=r"nowhere.txt"),
      dict(id="infer_no_run", module="t5x_lite.infer",
           argv=[f"--workdir={empty}", f"--output={root}/new/out.jsonl"], workdir=empty,
           error=r"empty"),
      dict(id="icl_unknown_task", module="gpt_flax.icl",
           argv=[f"--workdir={run}", "--task=nosuch"], workdir=run, error=r"nosuch"),
      dict(id="tokenizer_no_files", module="common.tokenizer",
           argv=[f"--dataset=jsonl:{root}/nowhere/*.jsonl",
                 f"--output={root}/new/tok_a/sp.model"], workdir=new("tok_a"),
           error=r"no files match"),
      dict(id="tokenizer_missing_text_field", module="common.tokenizer",
           argv=[f"--dataset=jsonl:{c}/{{split}}.jsonl", f"--output={root}/new/tok_b/sp.model"],
           workdir=new("tok_b"), error=r"no text field 'text'.*set --text_field$"),
      dict(id="tokenizer_vocab_too_large", module="common.tokenizer",
           argv=[f"--dataset=jsonl:{c}/{{split}}.jsonl", "--text_field=body",
                 "--vocab_size=100000", f"--output={root}/new/tok_c/sp.model"],
           workdir=new("tok_c"), error=r"vocab_size"),
      dict(id="tokenizer_output_suffix", module="common.tokenizer",
           argv=[f"--dataset=jsonl:{c}/{{split}}.jsonl", f"--output={root}/new/tok_d/sp.txt"],
           workdir=new("tok_d"), error=r"must end with .model"),
      dict(id="convert_no_hf_config", module="common.convert",
           argv=[f"--hf_dir={empty}", f"--workdir={root}/new/conv_a"], workdir=new("conv_a"),
           error=r"config.json"),
      dict(id="convert_malformed_hf_config", module="common.convert",
           argv=[f"--hf_dir={hf_bad}", f"--workdir={root}/new/conv_b"], workdir=new("conv_b"),
           error=r"hf_bad/config.json"),
      dict(id="convert_export_without_run", module="common.convert",
           argv=[f"--workdir={empty}", f"--export_to={root}/new/conv_c"], workdir=new("conv_c"),
           error=r"empty"),
      dict(id="rouge_missing_file", module="common.rouge",
           argv=[f"--predictions={root}/nowhere.jsonl"], workdir=new("rouge"),
           error=r"nowhere.jsonl"),
      dict(id="rouge_missing_field", module="common.rouge",
           argv=[f"--predictions={no_field}"], workdir=new("rouge"), error=r"target"),
      dict(id="aot_unknown_target", module="common.aot",
           argv=[f"--config={GPT}", "--target=v9-8"], workdir=new("aot"), error=r"v9-8"),
      dict(id="scaling_bad_sizes", module="gpt_flax.scaling",
           argv=[f"--workdir={root}/new/scaling", "--sizes=64by2"], workdir=new("scaling"),
           error=r"64by2"),
  ]
  return cases


def run_cases(root, cases: list[dict]) -> dict[str, dict]:
  """All cases through tests/cli_cases.py; also records each work dir before and after."""
  before = {case["id"]: _tree(case["workdir"]) for case in cases}
  spec, out = os.path.join(root, "cases.json"), os.path.join(root, "results.json")
  with open(spec, "w") as f:
    json.dump([{k: case[k] for k in ("id", "module", "argv")} for case in cases], f)
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu", FLAX_PRETRAIN_TCMALLOC="0")
  done = subprocess.run([sys.executable, "-m", "tests.cli_cases", spec, out], cwd=ROOT, env=env,
                        capture_output=True, text=True, timeout=900)
  assert done.returncode == 0, done.stderr[-3000:]
  with open(out) as f:
    results = json.load(f)
  for case in cases:
    results[case["id"]]["unchanged"] = _tree(case["workdir"]) == before[case["id"]]
  return results


@pytest.fixture(scope="module")
def table(tmp_path_factory):
  root = tmp_path_factory.mktemp("bad_input")
  cases = build(root)
  return {case["id"]: case for case in cases}, run_cases(root, cases)


CASE_IDS = [
    "unknown_config_key", "config_value_not_a_number", "unknown_flag", "positional_argument",
    "unknown_preset", "negative_learning_rate", "unknown_dtype", "dropout_above_one",
    "zero_batch", "keep_no_checkpoints", "seq_len_above_max_len", "no_workdir",
    "workdir_is_a_file", "workdir_not_writable", "unknown_dataset_spec", "no_data_files",
    "not_utf8_line", "invalid_json_line", "json_line_not_an_object", "missing_text_field",
    "bad_split_slice", "no_tokenizer", "truncated_tokenizer", "tokenizer_larger_than_vocab",
    "init_from_missing", "resume_with_other_dataset", "checkpoint_meta_malformed",
    "t5_unknown_task", "t5_negative_warmup", "bert_seq_len_above_max_len",
    "bert_classify_reads_classify_section", "generate_no_checkpoint",
    "generate_negative_temperature", "generate_prompts_file_missing", "infer_no_run",
    "icl_unknown_task", "tokenizer_no_files", "tokenizer_missing_text_field",
    "tokenizer_vocab_too_large", "tokenizer_output_suffix", "convert_no_hf_config",
    "convert_malformed_hf_config", "convert_export_without_run", "rouge_missing_file",
    "rouge_missing_field", "aot_unknown_target", "scaling_bad_sizes"]


def test_the_table_lists_every_case(table):
  assert sorted(table[0]) == sorted(CASE_IDS) and len(CASE_IDS) >= 30


@pytest.mark.parametrize("case_id", CASE_IDS)
def test_bad_input_is_one_line_exit_2_and_nothing_written(table, case_id):
  import re  # pylint: disable=g-import-not-at-top
  case, result = table[0][case_id], table[1][case_id]
  errors = [l for l in result["stderr"].splitlines() if l.startswith("error:")]
  assert result["rc"] == 2, result["stderr"][-3000:]
  assert len(errors) == 1, result["stderr"][-3000:]
  assert "Traceback" not in result["stderr"], result["stderr"][-3000:]
  assert re.search(case["error"], errors[0]), errors[0]
  assert result["unchanged"], f"{case['workdir']} was changed"


if __name__ == "__main__":  # prints what each case prints (the closing note's table)
  import tempfile  # pylint: disable=g-import-not-at-top
  with tempfile.TemporaryDirectory() as tmp:
    all_cases = build(tmp)
    res = run_cases(tmp, all_cases)
    for case in all_cases:
      r = res[case["id"]]
      lines = [l for l in r["stderr"].splitlines() if l.startswith("error:")] or [
          r["stderr"].strip().splitlines()[-1:] or ["(nothing)"]][0]
      print(f"| {case['id']} | {case['module']} | {r['rc']} | {'; '.join(lines)[:300]} | "
            f"{'unchanged' if r['unchanged'] else 'CHANGED'} |")
