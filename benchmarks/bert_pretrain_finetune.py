"""Does pretraining help? Pretrain the demo BERT on the Debian descriptions, fine-tune it on the
movie-review sentiment sentences, and compare with the same architecture fine-tuned from random
initialisation with the identical fine-tuning budget (steps, batch, learning rate, warmup,
seeds), next to the majority-class baseline.

  PYTHONPATH=. python benchmarks/bert_pretrain_finetune.py --data_dir=/work/data \\
      --out=workdirs/bert_compare [--seeds=0,1,2] [--pretrain_steps=N] [--skip_pretrain]

Needs the prepared Debian corpus and its tokenizer in data_dir (`python -m common.data.prepare
--dataset=debian`, as root; `--prepare` on the trainer) and the sentiment set (prepared here if
missing, via `pip download`). Every command is printed and timed; the summary goes to
OUT/summary.md and OUT/summary.json. Runs are resumable: a finished run is reused.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = [sys.executable, "-m", "bert_flax.train", "--config=configs/bert.py:demo"]


def parse_args(argv=None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--data_dir", required=True)
  p.add_argument("--out", default="workdirs/bert_compare")
  p.add_argument("--seeds", default="0", help="fine-tuning seeds (comma list); each seed runs "
                 "both arms")
  p.add_argument("--pretrain_steps", type=int, default=0, help="0: the demo preset's")
  p.add_argument("--skip_pretrain", action="store_true", help="reuse OUT/pretrain as it is")
  p.add_argument("--pretrain_extra", action="append", default=[],
                 help="extra flags for pretraining, e.g. --pretrain_extra=--config.train."
                      "checkpoint_every=100 (resume points on a busy machine)")
  p.add_argument("--extra", action="append", default=[],
                 help="extra --config.classify.* flags for both arms, e.g. "
                      "--extra=--config.classify.epochs=4")
  a = p.parse_args(argv)
  a.seeds = [int(s) for s in a.seeds.split(",") if s.strip()]
  return a


def run(cmd: list[str], log: str) -> float:
  """Runs `cmd` (output to `log` and the console tail); returns wall seconds."""
  print("$ " + " ".join(cmd), flush=True)
  t0 = time.time()
  with open(log, "a") as f:
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=dict(os.environ, PYTHONPATH=ROOT))
    for line in proc.stdout:
      f.write(line)
      if not line.startswith(("I1", "W1", "WARNING")):
        print("  " + line.rstrip(), flush=True)
  if proc.wait():
    raise SystemExit(f"error: command failed (exit {proc.returncode}); see {log}")
  return time.time() - t0


def main(argv=None) -> None:
  a = parse_args(argv)
  out = os.path.abspath(a.out)
  os.makedirs(out, exist_ok=True)
  data = [f"--config.data.data_dir={a.data_dir}"]
  walls: dict[str, float] = {}
  if not os.path.isdir(os.path.join(a.data_dir, "movie_review_sentiment")):
    walls["prepare sentiment"] = run([sys.executable, "-m", "common.data.prepare",
                                      "--dataset=sentiment", f"--data_dir={a.data_dir}"],
                                     os.path.join(out, "prepare.log"))
  pre = os.path.join(out, "pretrain")
  if not a.skip_pretrain:
    steps = [f"--config.train.num_steps={a.pretrain_steps}"] if a.pretrain_steps else []
    walls["pretrain"] = run(TRAIN + data + steps + a.pretrain_extra + [f"--workdir={pre}"],
                            os.path.join(out, "pretrain.log"))
  results: dict[str, list[dict]] = {"pretrained": [], "random": []}
  for seed in a.seeds:
    for arm, init in (("pretrained", pre), ("random", "")):
      wd = os.path.join(out, f"finetune_{arm}_seed{seed}")
      cmd = TRAIN + data + ["--config.task=classify", f"--config.classify.init_from={init}",
                            f"--config.seed={seed}", *a.extra, f"--workdir={wd}"]
      walls[f"finetune {arm} seed {seed}"] = run(cmd, wd + ".log")
      with open(os.path.join(wd, "results.json")) as f:
        results[arm].append(json.load(f))
  summarize(out, a, results, walls)


def summarize(out: str, a, results: dict[str, list[dict]], walls: dict[str, float]) -> None:
  first = results["pretrained"][0]
  lines = [f"# BERT demo: pretrained vs random init on movie-review sentiment "
           f"(seeds {a.seeds})", "",
           f"test {first['examples']['test']} / validation {first['examples']['validation']} / "
           f"train {first['examples']['train']} sentences", "",
           "| init | test accuracy | test F1 | validation accuracy |", "|---|---:|---:|---:|"]
  summary = {"seeds": a.seeds, "wall_s": walls}
  for arm, rs in results.items():
    acc = [r["test"]["accuracy"] for r in rs]
    f1 = [r["test"]["f1"] for r in rs]
    val = [r["validation"]["accuracy"] for r in rs]
    fmt = lambda xs: (f"{statistics.mean(xs):.4f}" + (f" ± {statistics.stdev(xs):.4f}"
                                                      if len(xs) > 1 else ""))
    lines.append(f"| {arm} | {fmt(acc)} | {fmt(f1)} | {fmt(val)} |")
    summary[arm] = {"test_accuracy": acc, "test_f1": f1, "validation_accuracy": val}
  base = first["majority_baseline"]
  lines.append(f"| majority class ('{first['majority_label']}', from train) | {base['test']:.4f} "
               f"| - | {base['validation']:.4f} |")
  lines += ["", "wall times: " + "; ".join(f"{k} {v / 60:.1f} min" for k, v in walls.items())]
  summary["majority"] = {"label": first["majority_label"], **base}
  text = "\n".join(lines)
  print("\n" + text)
  with open(os.path.join(out, "summary.md"), "w") as f:
    f.write(text + "\n")
  with open(os.path.join(out, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)


if __name__ == "__main__":
  main()
