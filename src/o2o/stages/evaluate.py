"""Stage 5: deterministic evaluation episodes, scored like D4RL."""
from __future__ import annotations

import math

import numpy as np

from o2o import metrics as M
from o2o.config import Config
from o2o.envs import make_env
from o2o.rollout import rollout


def normalized_score(episode_return: float, ref_min: float | None, ref_max: float | None) -> float:
    """D4RL's normalized score, x100: 0 is the reference random policy, 100 the reference expert."""
    if ref_min is None or ref_max is None:
        return math.nan
    return 100.0 * (episode_return - ref_min) / (ref_max - ref_min)


class Evaluator:
    """Runs the policy's deterministic action tanh(mean) for the domain's number of episodes."""

    def __init__(self, cfg: Config, ref_min: float | None, ref_max: float | None):
        self.episodes, self.success_steps = cfg.domain.eval_episodes, cfg.env.success_steps
        self.ref_min, self.ref_max = ref_min, ref_max
        self.env = make_env(cfg.env, binary_reward=cfg.domain.reward.binary_from_success, training=False,
                            seed=cfg.seed + 10_000)

    def __call__(self, agent) -> dict[str, float]:
        runs = [rollout(self.env, lambda obs: agent.act(obs, deterministic=True)) for _ in range(self.episodes)]
        mean_return = float(np.mean([sum(run.task_rewards.tolist()) for run in runs]))
        return {M.RETURN: mean_return, M.NORMALIZED_SCORE: normalized_score(mean_return, self.ref_min, self.ref_max),
                M.SUCCESS_RATE: float(np.mean([run.success[1:].sum() >= self.success_steps for run in runs])),
                M.EPISODE_LENGTH: float(np.mean([len(run) for run in runs]))}
