"""Plots of a scaling sweep (matplotlib, imported when plotting: training needs none of it):
loss vs parameters, loss vs compute with the frontier fit, compute-optimal size, learning
curves; one PNG per panel plus scaling.png with all four."""

from __future__ import annotations

import math
import os

import numpy as np

from gpt_flax import scaling_fit


def _fit_label(fit: dict, key: str, what: str) -> str:
  v, ci = fit["value"][key], fit["ci68"].get(key)
  err = f" ± {(ci[1] - ci[0]) / 2:.3f}" if ci else ""
  return f"{what}: {key} = {v:.3f}{err}"


def _plain_y(ax) -> None:
  """Loss axes are log-scaled over a narrow range: label ticks 4.5, 5, ... not 4.5x10^0, and
  leave minor x ticks unlabelled (they collide on short compute ranges)."""
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  fmt = ticker.FuncFormatter(lambda v, _: f"{v:g}")
  ax.yaxis.set_major_formatter(fmt)
  ax.yaxis.set_minor_formatter(fmt)
  ax.xaxis.set_minor_formatter(ticker.NullFormatter())


def _draw_power_fits(ax, xs: np.ndarray, fits: dict, var: str) -> None:
  """The pure power law (dashed) and power law + constant (solid) fitted over `var`."""
  if "value" in fits["power"]:
    p = fits["power"]["value"]
    ax.plot(xs, p["k"] * xs ** -p["alpha"], "k--", lw=1,
            label=_fit_label(fits["power"], "alpha", f"({var}_c/{var})^α"))
  if "value" in fits["power+E"]:
    p = fits["power+E"]["value"]
    ax.plot(xs, p["E"] + p["A"] * xs ** -p["alpha"], "k-", lw=1,
            label=_fit_label(fits["power+E"], "alpha", f"E + A/{var}^α, E={p['E']:.2f}"))


def _draw_loss_vs_params(ax, records, fit, cmap_d) -> None:
  n, loss = np.array([r["N"] for r in records]), np.array([r["val_loss"] for r in records])
  d = np.array([r["D"] for r in records])
  for dv in np.unique(d):
    m = d == dv
    ax.scatter(n[m], loss[m], color=cmap_d(dv), s=22, label=f"D = {dv / 1e6:.2g}M tokens",
               zorder=3)
  xs = np.geomspace(n.min() / 1.3, n.max() * 1.3, 100)
  lf = fit["L_N"]
  _draw_power_fits(ax, xs, lf, "N")
  ax.set(xscale="log", yscale="log", xlabel="non-embedding parameters N",
         ylabel="validation loss (nats/token)",
         title=f"Loss vs model size (fit at D = {lf['D'] / 1e6:.2g}M tokens)")
  _plain_y(ax)
  ax.legend(fontsize=7)


def _draw_loss_vs_compute(ax, records, curves, fit, cmap_n) -> None:
  c, loss = np.array([r["C"] for r in records]), np.array([r["val_loss"] for r in records])
  for r in records:
    cv = curves[r["name"]]
    if len(cv["eval_steps"]):
      per_step = r["C"] / r["steps"]
      ax.plot(cv["eval_steps"] * per_step, cv["eval_loss"], color=cmap_n(r["N"]), lw=0.8,
              alpha=0.5)
  ax.scatter(c, loss, c=[cmap_n(r["N"]) for r in records], s=22, zorder=3)
  fr = fit["L_C"]["frontier"]
  ax.plot(c[fr], loss[fr], "o", mfc="none", mec="k", ms=9, label="compute frontier")
  xs = np.geomspace(c.min() / 1.3, c.max() * 1.3, 100)
  _draw_power_fits(ax, xs, fit["L_C"], "C")
  ax.set(xscale="log", yscale="log", xlabel="training compute C (FLOPs)",
         ylabel="validation loss", title="Loss vs compute (lines: eval during training)")
  _plain_y(ax)
  ax.legend(fontsize=7)


def _draw_compute_optimal(ax, records, fit, cmap_n) -> None:
  c6 = np.array([r["C_6ND"] for r in records])
  ax.scatter(c6, [r["N"] for r in records], c=[cmap_n(r["N"]) for r in records], s=14,
             alpha=0.6, label="runs")
  xs = np.geomspace(c6.min(), c6.max(), 100)
  c6_fr = scaling_fit.frontier(c6, [r["val_loss"] for r in records])
  ax.plot(c6[c6_fr], [records[i]["N"] for i in c6_fr], "o", mfc="none", mec="k", ms=9,
          label="compute frontier (C = 6ND)")
  pf = fit["parametric"]
  if "value" in pf:
    p = pf["value"]
    ax.plot(xs, scaling_fit.compute_optimal_n(p, xs), "k-", lw=1.2,
            label=_fit_label(pf, "a", "L(N,D) fit"))
    anchor_c = math.sqrt(xs[0] * xs[-1])
    anchor_n = float(scaling_fit.compute_optimal_n(p, anchor_c))
    for name, a, style in (("Kaplan", scaling_fit.PUBLISHED["kaplan"]["a"], ":"),
                           ("Chinchilla", scaling_fit.PUBLISHED["chinchilla"]["a"]["approach 1"],
                            "-.")):
      ax.plot(xs, anchor_n * (xs / anchor_c) ** a, "k", ls=style, lw=0.8,
              label=f"{name}: a = {a}")
  ax.set(xscale="log", yscale="log", xlabel="training compute C = 6ND (FLOPs)",
         ylabel="non-embedding parameters N", title="Compute-optimal size N_opt ∝ C^a")
  ax.legend(fontsize=7)


def _draw_learning_curves(ax, records, curves, cmap_n) -> None:
  for r in records:
    cv = curves[r["name"]]
    tok = r["batch_size"] * r["seq_len"]
    ax.plot(cv["train_steps"] * tok, cv["train_loss"], color=cmap_n(r["N"]), lw=0.7, alpha=0.7)
    ax.plot(cv["eval_steps"] * tok, cv["eval_loss"], "o", color=cmap_n(r["N"]), ms=3)
  ax.set(xscale="log", xlabel="training tokens", ylabel="loss (lines: train, dots: validation)",
         title="Learning curves of all runs")
  _plain_y(ax)


def plot_all(records: list[dict], curves: dict, fit: dict, outdir: str) -> list[str]:
  """scaling.png (four panels) plus one PNG per panel; returns the paths written."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib.colors import LogNorm  # pylint: disable=g-import-not-at-top

  n = [r["N"] for r in records]
  d = [r["D"] for r in records]
  norm_n = LogNorm(min(n), max(n) * 1.0001)
  norm_d = LogNorm(min(d), max(d) * 1.0001)
  cmap_n = lambda v: plt.cm.viridis(norm_n(v))
  cmap_d = lambda v: plt.cm.plasma(0.85 * norm_d(v))
  panels = {
      "loss_vs_params": lambda ax: _draw_loss_vs_params(ax, records, fit, cmap_d),
      "loss_vs_compute": lambda ax: _draw_loss_vs_compute(ax, records, curves, fit, cmap_n),
      "compute_optimal": lambda ax: _draw_compute_optimal(ax, records, fit, cmap_n),
      "learning_curves": lambda ax: _draw_learning_curves(ax, records, curves, cmap_n),
  }
  colorbar = plt.cm.ScalarMappable(norm=norm_n, cmap="viridis")
  paths = []
  for name, draw in panels.items():
    fig, ax = plt.subplots(figsize=(6, 4.5), layout="constrained")
    draw(ax)
    if name != "loss_vs_params":
      fig.colorbar(colorbar, ax=ax, label="N (non-embedding)")
    paths.append(os.path.join(outdir, f"{name}.png"))
    fig.savefig(paths[-1], dpi=110)
    plt.close(fig)
  fig, axes = plt.subplots(2, 2, figsize=(13, 9.5), layout="constrained")
  for ax, draw in zip(axes.ravel(), panels.values()):
    draw(ax)
  fig.colorbar(colorbar, ax=axes[:, 1], label="N (non-embedding)", shrink=0.6)
  fig.suptitle(f"GPT scaling on {len(records)} runs "
               f"(N {min(n):,}..{max(n):,}, D {min(d) / 1e6:.2g}M..{max(d) / 1e6:.2g}M tokens)")
  paths.append(os.path.join(outdir, "scaling.png"))
  fig.savefig(paths[-1], dpi=110)
  plt.close(fig)
  return paths
