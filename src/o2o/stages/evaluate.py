"""Evaluation: deterministic episodes, scored with the paper's metric for the domain.

References: the Cal-QL paper, appendix D.1 (Adroit and AntMaze: the goal-achieved rate, an
episode counts if the goal is reached at any step; Kitchen: tasks solved / 4) and the authors'
evaluation loop (nakamotoo/Cal-QL, JaxCQL/conservative_sac_main.py: ``goal_achieved_rate`` is
``1 in goal_achieved`` per trajectory; the D4RL tasks use ``get_normalized_score`` of the return).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from o2o import metrics as M
from o2o.config import Config
from o2o.envs import make_env
from o2o.rollout import Episode, rollout


def normalized_return(episode_return: float, ref_min: float | None, ref_max: float | None) -> float:
    """D4RL's normalized return, x100: 0 is the reference random policy, 100 the reference expert."""
    if ref_min is None or ref_max is None:
        return math.nan
    return 100.0 * (episode_return - ref_min) / (ref_max - ref_min)


def score_episodes(episodes: Sequence[Episode], metrics: Sequence[str], ref_min: float | None = None,
                   ref_max: float | None = None) -> dict[str, float]:
    """The return, the length and the named ``metrics`` (o2o.metrics.HEADLINE_METRICS) of a set of episodes."""
    mean_return = float(np.mean([e.task_rewards.sum() for e in episodes]))
    results = {M.RETURN: mean_return, M.EPISODE_LENGTH: float(np.mean([len(e) for e in episodes]))}
    compute = {M.SUCCESS_RATE: lambda: float(np.mean([e.succeeded for e in episodes])),
               M.TASKS_SOLVED: lambda: float(np.mean([e.score for e in episodes])),
               M.TASKS_EVER_SOLVED: lambda: float(np.mean([e.goal_reached for e in episodes])),
               M.NORMALIZED_RETURN: lambda: normalized_return(mean_return, ref_min, ref_max)}
    for name in metrics:
        results[name] = compute[name]()
    return results


class Evaluator:
    """Runs the policy's deterministic action tanh(mean) for the domain's number of episodes."""

    def __init__(self, cfg: Config, ref_min: float | None, ref_max: float | None):
        self.episodes = cfg.domain.eval_episodes
        self.metrics = [cfg.domain.metric, *cfg.domain.extra_metrics]
        self.ref_min, self.ref_max = ref_min, ref_max
        self.env = make_env(cfg.env, cfg.domain, seed=cfg.seed + 10_000)

    def __call__(self, agent) -> dict[str, float]:
        runs = [rollout(self.env, lambda obs: agent.act(obs, deterministic=True)) for _ in range(self.episodes)]
        return score_episodes(runs, self.metrics, self.ref_min, self.ref_max)
