"""Stage 5: deterministic evaluation episodes, scored like D4RL."""
from __future__ import annotations

import math

import numpy as np

from o2o.config import EnvConfig
from o2o.envs import make_env


def normalized_score(episode_return: float, ref_min: float | None, ref_max: float | None) -> float:
    """D4RL's normalized score, x100: 0 is the reference random policy, 100 the reference expert."""
    if ref_min is None or ref_max is None:
        return math.nan
    return 100.0 * (episode_return - ref_min) / (ref_max - ref_min)


class Evaluator:
    """Runs the policy's deterministic action tanh(mean) for the configured number of episodes."""

    def __init__(self, cfg: EnvConfig, ref_min: float | None, ref_max: float | None, seed: int):
        self.cfg, self.ref_min, self.ref_max = cfg, ref_min, ref_max
        self.env = make_env(cfg, training=False, seed=seed + 10_000)

    def __call__(self, agent) -> dict[str, float]:
        returns, successes, lengths = [], [], []
        for _ in range(self.cfg.eval_episodes):
            obs, _ = self.env.reset()
            done, total, success_steps, length = False, 0.0, 0, 0
            while not done:
                obs, reward, terminated, truncated, info = self.env.step(agent.act(obs, deterministic=True))
                total += float(info.get("task_reward", reward))
                success_steps += bool(info.get("success", False))
                length += 1
                done = terminated or truncated
            returns.append(total)
            successes.append(success_steps >= self.cfg.success_steps)
            lengths.append(length)
        mean_return = float(np.mean(returns))
        return {"return": mean_return, "normalized_score": normalized_score(mean_return, self.ref_min, self.ref_max),
                "success_rate": float(np.mean(successes)), "episode_length": float(np.mean(lengths))}
