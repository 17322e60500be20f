"""Environment construction: the same observation layout and reward rules as the data."""
from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np

from o2o.config import EnvConfig


def flatten_observation(obs: Any, keys: list[str]) -> np.ndarray:
    """Concatenate the chosen keys of a dict observation (or pass an array through)."""
    if not keys:
        return np.asarray(obs, dtype=np.float32)
    return np.concatenate([np.asarray(obs[k], dtype=np.float32).reshape(-1) for k in keys])


class FlatObservation(gym.ObservationWrapper):
    """Dict observations -> one float32 vector, keys in the configured order."""

    def __init__(self, env: gym.Env, keys: list[str]):
        super().__init__(env)
        self.keys = list(keys)
        sample = flatten_observation(env.observation_space.sample(), self.keys)
        self.observation_space = gym.spaces.Box(-np.inf, np.inf, shape=sample.shape, dtype=np.float32)

    def observation(self, observation: Any) -> np.ndarray:
        return flatten_observation(observation, self.keys)


class BinarySuccessReward(gym.Wrapper):
    """The Cal-QL Adroit setting: reward 0 on success and -1 otherwise.

    The task's own reward stays in ``info["task_reward"]`` for scoring. With
    ``terminate_on_success`` (training episodes) a success ends the episode.
    """

    def __init__(self, env: gym.Env, terminate_on_success: bool):
        super().__init__(env)
        self.terminate_on_success = terminate_on_success

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        success = bool(info.get("success", False))
        info["task_reward"] = float(reward)
        terminated = terminated or (self.terminate_on_success and success)
        return obs, (0.0 if success else -1.0), terminated, truncated, info


def _register_robotics() -> None:
    import gymnasium_robotics

    gym.register_envs(gymnasium_robotics)


def make_env(cfg: EnvConfig, *, training: bool = True, seed: int | None = None) -> gym.Env:
    """Build the configured env with a flat float32 observation.

    Training envs apply the binary reward and end on success when the config
    asks for it; evaluation envs keep the full horizon so scores compare.
    """
    _register_robotics()
    kwargs = dict(cfg.gym_kwargs)
    if cfg.max_episode_steps is not None:
        kwargs["max_episode_steps"] = cfg.max_episode_steps
    env = gym.make(cfg.gym_id, **kwargs)
    env = FlatObservation(env, cfg.obs_keys)
    if cfg.reward.binary_from_success:
        env = BinarySuccessReward(env, terminate_on_success=training)
    if seed is not None:
        env.reset(seed=seed)
        env.action_space.seed(seed)
    return env


def transform_reward(reward, cfg: EnvConfig):
    """The reward the learner sees: ``r * scale + bias`` (arrays or scalars)."""
    return reward * cfg.reward.scale + cfg.reward.bias
