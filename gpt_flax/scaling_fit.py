"""Scaling-law fits with uncertainty: power laws on log scales, the compute frontier, and
Chinchilla's parametric L(N, D) with the compute-optimal N(C) it implies.

Every fit minimises squared residuals of log(loss) (losses are positive and their noise is
roughly multiplicative). Uncertainty comes from a residual bootstrap on that log scale (the
design points N, D, C stay fixed, so a resample of six runs never degenerates to two distinct
N): refit on fitted·exp(resampled residuals), residuals inflated by sqrt(n / (n - p)) for the
p fitted parameters, and report the median with a 68 % interval (16th-84th percentile).
Pure numpy + scipy (scipy comes with jax).
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np
from scipy import optimize

# Published values, printed next to ours as context (exponents depend on data, tokenizer and
# scale: a sweep of tiny models is far from the regime these were measured in).
PUBLISHED = {
    "kaplan": {  # Kaplan et al. 2020, "Scaling Laws for Neural Language Models"
        "alpha_N": 0.076, "N_c": 8.8e13,        # L(N) = (N_c / N)^alpha_N, converged models
        "alpha_D": 0.095, "D_c": 5.4e13,        # L(D) = (D_c / D)^alpha_D
        "alpha_C": 0.050,                       # L(C_min) on the compute-efficient frontier
        "a": 0.73,                              # N_opt proportional to C^a
    },
    "chinchilla": {  # Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models"
        "E": 1.69, "A": 406.4, "B": 410.7,     # L(N, D) = E + A / N^alpha + B / D^beta
        "alpha": 0.34, "beta": 0.28,
        "a": {"approach 1": 0.50, "approach 2": 0.49, "approach 3": 0.46},
    },
}

MIN_POINTS = {"power": 3, "power+E": 4, "parametric": 6}


class TooFewPoints(ValueError):
  pass


def _check(n: int, kind: str) -> None:
  if n < MIN_POINTS[kind]:
    raise TooFewPoints(f"a {kind} fit needs at least {MIN_POINTS[kind]} points, got {n}")


# ----------------------------------------------------------------------------------------
# Point fits (no uncertainty): each returns (parameters, fitted values).


def power_law(x: np.ndarray, y: np.ndarray) -> tuple[dict, np.ndarray]:
  """y = (x_c / x)^alpha = k x^-alpha, by linear least squares of log y on log x (Kaplan's
  form)."""
  _check(len(x), "power")
  lx, ly = np.log(x), np.log(y)
  slope, icpt = np.polyfit(lx, ly, 1)
  alpha = -slope
  return {"alpha": alpha, "k": math.exp(icpt), "x_c": _scale(icpt, alpha)}, \
      np.exp(icpt + slope * lx)


def _scale(log_k: float, alpha: float) -> float:
  """x_c of k x^-alpha = (x_c / x)^alpha; inf when alpha is ~0 (a flat law has no scale)."""
  if alpha <= 0:
    return float("nan")
  return math.exp(log_k / alpha) if log_k / alpha < 700 else float("inf")


def power_law_plus_constant(x: np.ndarray, y: np.ndarray, init: dict | None = None
                            ) -> tuple[dict, np.ndarray]:
  """y = E + A x^-alpha (irreducible loss E), least squares on log y.

  Starts from a profile over E (for fixed E, log(y - E) is linear in log x), then refines all
  three parameters; E is kept in [0, min y) and alpha in [0, 5].
  """
  _check(len(x), "power+E")
  lx, ly = np.log(x), np.log(y)

  def model(p):
    log_a, alpha, e = p
    return np.log(e + np.exp(log_a - alpha * lx))

  def jac(p):
    log_a, alpha, e = p
    t = np.exp(log_a - alpha * lx)
    return np.stack([t, -lx * t, np.ones_like(t)], axis=1) / (e + t)[:, None]

  if init is not None:  # bootstrap refits: one start at the full-data optimum
    starts = [[math.log(init["A"]), init["alpha"], init["E"]]]
  else:
    starts = []
    for frac in (0.0, 0.5, 0.8, 0.95):
      e = frac * y.min()
      slope, icpt = np.polyfit(lx, np.log(y - e), 1)
      starts.append([icpt, max(-slope, 1e-3), e])
  lo, hi = [-np.inf, 0.0, 0.0], [np.inf, 5.0, y.min() * (1 - 1e-9)]
  best = None
  for p0 in starts:
    p0 = np.clip(p0, lo, [np.inf, 5.0, y.min() * 0.999])
    r = optimize.least_squares(lambda p: model(p) - ly, p0, jac=jac, bounds=(lo, hi),
                               method="trf")
    if best is None or r.cost < best.cost:
      best = r
  log_a, alpha, e = best.x
  params = {"alpha": alpha, "A": math.exp(log_a), "E": e, "x_c": _scale(log_a, alpha)}
  return params, np.exp(model(best.x))


def parametric(n: np.ndarray, d: np.ndarray, y: np.ndarray, init: dict | None = None
               ) -> tuple[dict, np.ndarray]:
  """Chinchilla's approach 3: L(N, D) = E + A / N^alpha + B / D^beta, Huber loss on log L.

  The compute-optimal allocation under C = 6 N D follows in closed form:
  N_opt = G (C / 6)^a with a = beta / (alpha + beta), G = (alpha A / (beta B))^(1 / (alpha + beta)).
  """
  _check(len(y), "parametric")
  if len(np.unique(n)) < 2 or len(np.unique(d)) < 2:
    raise TooFewPoints("a parametric L(N, D) fit needs at least 2 distinct N and 2 distinct D")
  ln, ld, ly = np.log(n), np.log(d), np.log(y)

  def model(p):
    a, b, e, alpha, beta = p
    return np.logaddexp(np.logaddexp(a - alpha * ln, b - beta * ld), e)

  def jac(p):
    a, b, e, alpha, beta = p
    w = np.exp(np.stack([a - alpha * ln, b - beta * ld, np.full_like(ln, e)], axis=1)
               - model(p)[:, None])  # each term's share of L
    return np.stack([w[:, 0], w[:, 1], w[:, 2], -ln * w[:, 0], -ld * w[:, 1]], axis=1)

  if init is not None:
    starts = [[math.log(init["A"]), math.log(init["B"]), math.log(init["E"]), init["alpha"],
               init["beta"]]]
  else:
    starts = [[a, a, e, al, al] for a in (2.0, 6.0)
              for e in (math.log(0.3 * y.min()), math.log(0.8 * y.min())) for al in (0.2, 0.5)]
  lo, hi = [-20.0, -20.0, -10.0, 0.0, 0.0], [50.0, 50.0, math.log(y.min()), 3.0, 3.0]
  best = None
  for p0 in starts:
    p0 = np.clip(p0, lo, np.array(hi) - 1e-6)
    # Chinchilla's Huber delta is 1e-3 (in log loss): robust to a diverged or unlucky run.
    r = optimize.least_squares(lambda p: model(p) - ly, p0, jac=jac, bounds=(lo, hi),
                               loss="huber", f_scale=1e-3, method="trf", max_nfev=200)
    if best is None or r.cost < best.cost:
      best = r
  a, b, e, alpha, beta = best.x
  params = {"E": math.exp(e), "A": math.exp(a), "B": math.exp(b), "alpha": alpha, "beta": beta}
  s = alpha + beta
  params["a"] = beta / s if s > 0 else float("nan")
  params["b"] = alpha / s if s > 0 else float("nan")
  log_g = (math.log(alpha * params["A"]) - math.log(beta * params["B"])) / s \
      if alpha > 0 and beta > 0 else float("nan")
  params["G"] = math.exp(log_g) if log_g < 700 else float("inf")
  return params, np.exp(model(best.x))


def compute_optimal_n(params: dict, compute: np.ndarray) -> np.ndarray:
  """N_opt(C) from a parametric fit (C in the 6·N·D convention)."""
  return params["G"] * (np.asarray(compute) / 6.0) ** params["a"]


def frontier(compute: Sequence[float], loss: Sequence[float]) -> np.ndarray:
  """Indices of compute-efficient runs: each has a lower loss than every run of less compute."""
  order = np.argsort(compute, kind="stable")
  keep, best = [], np.inf
  for i in order:
    if loss[i] < best:
      keep.append(i)
      best = loss[i]
  return np.asarray(keep, dtype=int)


# ----------------------------------------------------------------------------------------
# Uncertainty.


def bootstrap(fit: Callable[[np.ndarray], tuple[dict, np.ndarray]], y: np.ndarray, *,
              num_params: int, n_boot: int = 200, seed: int = 0) -> dict:
  """Point fit plus residual-bootstrap intervals: {"value": params, "ci68": {k: [lo, hi]},
  "std": {k: s}, "rmse_log": ...}. `fit(y)` refits on the fixed design."""
  params, fitted = fit(y)
  resid = np.log(y) - np.log(fitted)
  n = len(y)
  inflate = math.sqrt(n / (n - num_params)) if n > num_params else 1.0
  rng = np.random.default_rng(seed)
  samples: dict[str, list[float]] = {k: [] for k in params}
  for _ in range(n_boot):
    y_star = fitted * np.exp(inflate * rng.choice(resid, size=n, replace=True))
    try:
      p, _ = fit(y_star)
    except (ValueError, np.linalg.LinAlgError, FloatingPointError):
      continue
    for k, v in p.items():
      samples[k].append(v)
  out = {"value": {k: float(v) for k, v in params.items()}, "ci68": {}, "std": {},
         "n_points": n, "rmse_log": float(np.sqrt(np.mean(resid ** 2))),
         "n_boot": len(next(iter(samples.values()), []))}
  for k, vals in samples.items():
    v = np.asarray(vals, dtype=float)
    v = v[np.isfinite(v)]
    if len(v):
      out["ci68"][k] = [float(np.percentile(v, 16)), float(np.percentile(v, 84))]
      with np.errstate(over="ignore"):  # scales like x_c of a near-flat law reach 1e300
        out["std"][k] = float(v.std())
  return out


def _skipped(e: Exception) -> dict:
  return {"skipped": str(e)}


def _curves(x: np.ndarray, y: np.ndarray, n_boot: int, seed: int) -> dict:
  """Both forms of y(x) -- pure power law and with an irreducible term -- with intervals."""
  out = {}
  for name, fn, p in (("power", power_law, 2), ("power+E", power_law_plus_constant, 3)):
    try:
      full, _ = fn(x, y)
      # Bootstrap refits of the 3-parameter form start from the full-data optimum.
      refit = (lambda y_: fn(x, y_, full)) if fn is power_law_plus_constant else \
          (lambda y_: fn(x, y_))
      out[name] = bootstrap(refit, y, num_params=p, n_boot=n_boot, seed=seed)
    except TooFewPoints as e:
      out[name] = _skipped(e)
  return out


def fit_all(n: np.ndarray, d: np.ndarray, c: np.ndarray, loss: np.ndarray, *,
            n_boot: int = 200, seed: int = 0) -> dict:
  """Every fit of the study from per-run arrays: non-embedding params N, tokens D, training
  compute C, final validation loss. Indices refer to the input order; a fit with too few
  points says why instead of failing the study.

  The compute-optimal N(C) comes from the parametric fit (approach 3), the estimator that suits
  a grid of sizes x token budgets: reading optima off a coarse size grid (approaches 1 and 2)
  was biased by up to 0.1 in the exponent a on synthetic grids like the presets'."""
  n, d, c, loss = (np.asarray(v, dtype=float) for v in (n, d, c, loss))
  out: dict = {"published": PUBLISHED}

  # L(N) at one token budget: the largest that at least 3 sizes reached (all sizes, once the
  # sweep is complete). Mixing budgets would bend the curve where a sweep was interrupted.
  budgets = [b for b in np.unique(d)[::-1] if len(np.unique(n[d == b])) >= MIN_POINTS["power"]]
  at = np.flatnonzero(d == (budgets[0] if budgets else d.max()))
  out["L_N"] = {"runs": at.tolist(), "D": float(d[at[0]]), **_curves(n[at], loss[at], n_boot, seed)}

  # L(C) on the compute-efficient frontier of final losses, and N_opt(C) along it.
  fr = frontier(c, loss)
  out["L_C"] = {"frontier": fr.tolist(), **_curves(c[fr], loss[fr], n_boot, seed)}
  # Chinchilla approach 3 on all runs: alpha, beta and the compute-optimal exponent a.
  try:
    full, _ = parametric(n, d, loss)
    out["parametric"] = bootstrap(lambda y: parametric(n, d, y, full), loss, num_params=5,
                                  n_boot=n_boot, seed=seed)
  except TooFewPoints as e:
    out["parametric"] = _skipped(e)

  return out
