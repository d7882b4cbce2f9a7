"""The transfer grid's report: per-budget statistics over seeds, the Markdown table and the
learning-curve plot (`common.transfer` runs the grid)."""

from __future__ import annotations

import math
import statistics
from typing import Any

INITS = ("pretrained", "random")


def _mean_std(xs: list[float]) -> tuple[float, float]:
  return statistics.mean(xs), statistics.stdev(xs) if len(xs) > 1 else 0.0


def summarize(rows: list[dict[str, Any]], metric: str, extra: tuple[str, ...] = ()
              ) -> list[dict[str, Any]]:
  """Per budget and init: (mean, std, count) of each reported metric; and the difference of
  the main metric's means in standard errors (pretrained - random)."""
  out = []
  for n in sorted({r["budget"] for r in rows}):
    line: dict[str, Any] = {"budget": n}
    for init in INITS:
      cell = [r for r in rows if r["budget"] == n and r["init"] == init]
      line[init] = {k: (*_mean_std([r[k] for r in cell]), len(cell))
                    for k in (metric, *extra)} if cell else None
    p, r = (line[i] and line[i][metric] for i in INITS)
    se = math.sqrt(p[1] ** 2 / p[2] + r[1] ** 2 / r[2]) if p and r else 0.0
    line["z"] = (p[0] - r[0]) / se if se > 0 else None
    out.append(line)
  return out


def table(summary: list[dict[str, Any]], m: str, extra: tuple[str, ...],
          baseline: tuple[str, float]) -> str:
  """The Markdown table: per budget, mean ± std (cells) of each init, their difference."""
  head = f"| labels | pretrained: {m} | random init: {m} | difference | in SE |"
  head += "".join(f" {k} (pre / rand) |" for k in extra)
  lines = [head, "|---:" * (5 + len(extra)) + "|"]
  for s in summary:
    p, r = s["pretrained"], s["random"]
    fmt = lambda c: f"{c[m][0]:.4f} ± {c[m][1]:.4f} ({c[m][2]})" if c else "-"
    line = f"| {s['budget']} | {fmt(p)} | {fmt(r)} | "
    line += f"{p[m][0] - r[m][0]:+.4f} | " if p and r else "- | "
    line += f"{s['z']:+.1f} |" if s["z"] is not None else "- |"
    for k in extra:
      line += " " + " / ".join(f"{c[k][0]:.3f}" if c else "-" for c in (p, r)) + " |"
    lines.append(line)
  lines.append(f"\nbaseline, {baseline[0]}: {baseline[1]:.4f}")
  return "\n".join(lines)


def plot(summary: list[dict[str, Any]], rows: list[dict[str, Any]], metric: str,
         metric_name: str, title: str, baseline: tuple[str, float], path: str) -> None:
  """The learning curves: mean ± std per budget and init, each seed a dot, the baseline."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6.4, 4.2))
  for init, color in zip(INITS, ("tab:blue", "tab:orange")):
    pts = [(s["budget"], s[init][metric]) for s in summary if s[init]]
    if not pts:
      continue
    ax.errorbar([x for x, _ in pts], [c[0] for _, c in pts], yerr=[c[1] for _, c in pts],
                marker="o", capsize=3, color=color, label=f"{init} (mean ± std over seeds)")
    seeds = [(r["budget"], r[metric]) for r in rows if r["init"] == init]
    ax.scatter(*zip(*seeds), s=8, alpha=0.4, color=color)
  ax.axhline(baseline[1], ls="--", color="gray", label=baseline[0])
  ax.set_xscale("log")
  ax.set_xlabel("labelled training examples")
  ax.set_ylabel(metric_name)
  ax.set_title(title)
  ax.legend(fontsize=8)
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)
