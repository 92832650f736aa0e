"""Backtests of gradient-rebalanced portfolios on the bus, replayed bit-exactly from the log.

Writes ``experiments/results/finance_backtest.json`` and ``.../finance_backtest.png``.

Price paths: 8 assets, correlated geometric Brownian motion (annual drifts 2-14 %, volatilities
15-40 %, a one-factor correlation structure), 2 years of trading days, one path per seed.
Strategies (window W = 60 days of log returns for the derived ``mean``/``cov`` pages, rebalanced
every 5 days, 5 bp fee on the traded value, long only, cash allowed):

* ``equal``: equal weights (the baseline);
* ``sharpe``: maximise the Sharpe ratio (projected Adam onto the simplex);
* ``mv_projected`` / ``mv_softmax``: maximise ``w'mu - (lambda/2) w'Cw``, lambda = 5, by
  projected Adam and through a softmax parameterisation.

For each run: final equity, annualised return and volatility of the daily equity, annualised
Sharpe ratio, maximum drawdown, mean turnover per rebalance, the number of commits, live and
replay wall time, and whether :func:`mmsb_jax.apps.replay_backtest` reproduced the equity curve,
weights and turnover bit for bit (``np.array_equal``). The strategies estimate ``mu`` from 60
noisy days, so an optimised portfolio is not expected to beat equal weights out of sample; the
numbers are reported as measured. Run ``python experiments/finance_backtest.py [--quick]``.
"""

from __future__ import annotations

import argparse
import tempfile

import jax
import matplotlib
import numpy as np
from _common import RESULTS, write_json

import mmsb_jax.apps as apps

matplotlib.use("Agg")
import matplotlib.pyplot as plt

M, DAYS = 8, 504
STRATEGIES = {
    "equal": dict(objective="equal"),
    "sharpe": dict(objective="sharpe", method="projected"),
    "mv_projected": dict(objective="mean_variance", method="projected", risk_aversion=5.0),
    "mv_softmax": dict(objective="mean_variance", method="softmax", risk_aversion=5.0,
                       learning_rate=0.05),
}


def market(seed: int) -> np.ndarray:
    rng = np.random.default_rng(100 + seed)
    vol = np.linspace(0.15, 0.40, M)
    beta = rng.uniform(0.3, 0.8, M)
    corr = np.outer(beta, beta)
    np.fill_diagonal(corr, 1.0)
    cov = corr * np.outer(vol, vol)
    mu = np.linspace(0.02, 0.14, M)
    return np.asarray(apps.gbm_paths(jax.random.key(seed), np.full(M, 100.0), mu, cov, DAYS))


def stats(equity: np.ndarray, start: int) -> dict:
    e = equity[start:].astype(np.float64)
    r = np.diff(np.log(e))
    ann_ret = r.mean() * 252
    ann_vol = r.std(ddof=1) * np.sqrt(252)
    drawdown = 1.0 - e / np.maximum.accumulate(e)
    return {"final_equity": float(equity[-1]), "annual_return": float(ann_ret),
            "annual_volatility": float(ann_vol),
            "sharpe": float(ann_ret / ann_vol) if ann_vol > 0 else 0.0,
            "max_drawdown": float(drawdown.max())}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true", help="one price path")
    args = parser.parse_args()
    seeds = [0] if args.quick else [0, 1, 2]
    runs = []
    curves = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            prices = market(seed)
            for name, kw in STRATEGIES.items():
                config = apps.BacktestConfig(window=60, rebalance_every=5, fee=0.0005, **kw)
                live = apps.backtest(f"{tmp}/{name}-{seed}", prices, config, sync="never")
                again = apps.replay_backtest(f"{tmp}/{name}-{seed}")
                exact = all(np.array_equal(getattr(live, f), getattr(again, f))
                            for f in ("equity", "weights", "turnover", "rebalance_days"))
                row = {"seed": seed, "strategy": name, **stats(live.equity, config.window),
                       "mean_turnover": float(live.turnover[live.rebalance_days].mean()),
                       "mean_cash_weight": float(1 - live.weights[config.window:].sum(1).mean()),
                       "commits": live.seq, "live_s": live.seconds, "replay_s": again.seconds,
                       "replay_bit_exact": bool(exact)}
                runs.append(row)
                print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()})
                if seed == 0:
                    curves[name] = live.equity
    summary = {}
    for name in STRATEGIES:
        rs = [r for r in runs if r["strategy"] == name]
        summary[name] = {k: float(np.mean([r[k] for r in rs]))
                         for k in ("final_equity", "annual_return", "annual_volatility",
                                   "sharpe", "max_drawdown", "mean_turnover")}
        summary[name]["all_replays_bit_exact"] = all(r["replay_bit_exact"] for r in rs)
    path = write_json("finance_backtest", {"assets": M, "days": DAYS, "seeds": seeds,
                                           "runs": runs, "mean_over_seeds": summary})
    fig, ax = plt.subplots(figsize=(7, 4))
    for name, eq in curves.items():
        ax.plot(eq, label=name)
    ax.axvline(60, color="grey", lw=0.5)
    ax.set_xlabel("trading day")
    ax.set_ylabel("equity")
    ax.set_title("Backtests on a GBM path (seed 0); replayed bit-exactly from the bus log")
    ax.legend()
    fig.tight_layout()
    fig.savefig(RESULTS / "finance_backtest.png", dpi=120)
    print("wrote", path)


if __name__ == "__main__":
    main()
