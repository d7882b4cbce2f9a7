"""Summary table of benchmarks/t5_pretrain_finetune.sh: test ROUGE of (a) pretrained +
fine-tuned, (b) fine-tuned from scratch, (c) the first-N-words baseline, wall times, examples.

  python benchmarks/t5_pretrain_finetune_summary.py OUT_DIR DATA_DIR
"""
import json, statistics, sys
from common.data.sources import open_source
from common.rouge import rouge

out, data_dir = sys.argv[1], sys.argv[2]
train = open_source("debian", "train", data_dir)
words = statistics.median(len(train[i]["synopsis"].split()) for i in range(0, len(train), 10))
rows = {r: [json.loads(l) for l in open(f"{out}/test_{r}.jsonl")] for r in ("pretrained", "scratch")}
refs = [r["target"] for r in rows["pretrained"]]
lead = [" ".join(r["input"].split()[:int(words)]) for r in rows["pretrained"]]
scores = {"(a) fine-tuned from pretrained": rouge([r["prediction"] for r in rows["pretrained"]], refs),
          "(b) same budget, random init": rouge([r["prediction"] for r in rows["scratch"]], refs),
          f"(c) first {int(words)} words of the input": rouge(lead, refs)}
wall = dict(l.split()[:2] for l in open(f"{out}/wall_seconds.txt"))
lines = [f"Debian description -> synopsis, test split, first {len(refs)} examples "
         "(beam 4, alpha 0.6)", "",
         "| system | ROUGE-1 | ROUGE-2 | ROUGE-Lsum |", "|---|---:|---:|---:|"]
lines += [f"| {k} | {v['rouge1']:.2f} | {v['rouge2']:.2f} | {v['rougeLsum']:.2f} |"
          for k, v in scores.items()]
lines += ["", "wall seconds: " + ", ".join(f"{k} {v}" for k, v in wall.items()), "",
          "examples (reference | pretrained+ft | scratch+ft | lead):"]
for i in range(0, len(refs), max(1, len(refs) // 8))[:8]:
  lines.append(f"- {refs[i]!r} | {rows['pretrained'][i]['prediction']!r} | "
               f"{rows['scratch'][i]['prediction']!r} | {lead[i]!r}")
open(f"{out}/summary.md", "w").write("\n".join(lines) + "\n")
print("\n".join(lines))
