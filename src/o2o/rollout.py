"""The one episode loop: online collection, evaluation and the dataset builders all step envs through it."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional

import numpy as np


@dataclass
class Episode:
    observations: list  # T + 1 observations as the env returned them (arrays or dicts)
    actions: np.ndarray  # (T, A)
    rewards: np.ndarray  # (T,) float64, as the env returned them
    task_rewards: np.ndarray  # (T,) float64, the task's own reward (``info["task_reward"]`` under a reward wrapper)
    terminations: np.ndarray  # (T,) bool
    truncations: np.ndarray  # (T,) bool
    success: np.ndarray  # (T + 1,) bool: the reset's ``info["success"]``, then after every step
    # (T + 1,) share of the goal reached so far: ``info["tasks_solved"]`` where the env has sub-tasks
    # (Kitchen), else 1.0 on success
    goal_fraction: np.ndarray
    # (T + 1,) share of the goal held at each step: ``info["tasks_at_goal"]`` where the env has sub-tasks (Kitchen:
    # the tasks in their goal state at that step), else the same as ``goal_fraction``
    goal_held: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def terminated(self) -> bool:
        return bool(len(self) and self.terminations[-1])

    @property
    def succeeded(self) -> bool:
        """The goal was reached at some step (the paper's goal-achieved criterion)."""
        return bool(self.success[1:].any())

    @property
    def goal_reached(self) -> float:
        """The largest share of the goal reached at any step (Kitchen: the tasks ever completed)."""
        return float(self.goal_fraction[1:].max()) if len(self) else 0.0

    @property
    def score(self) -> float:
        """The episode's share of the goal by the paper's measure, 1 - its regret: reached at any step, or for an env
        with sub-tasks the share held at the last step (the Cal-QL authors' Kitchen score, ``rewards[-1] / 4``)."""
        if self.goal_held is None:
            return self.goal_reached
        return float(self.goal_held[-1]) if len(self) else 0.0

    def stacked_observations(self, dtype=np.float32) -> Any:
        """(T + 1, D) for array observations, a dict of such arrays for dict observations."""
        if isinstance(self.observations[0], dict):
            return {k: np.asarray([o[k] for o in self.observations], dtype=dtype) for k in self.observations[0]}
        return np.asarray(self.observations, dtype=dtype)


def rollout(env, policy: Callable[[Any], np.ndarray], *, seed: Optional[int] = None,
            max_steps: Optional[int] = None, stop: Callable[[], bool] = lambda: False,
            after_step: Optional[Callable[..., None]] = None) -> Optional[Episode]:
    """Run ``policy`` (observation -> action) for one episode, or its first ``max_steps`` steps.

    ``seed`` reseeds the env at reset (None keeps its stream). Returns None
    when ``stop()`` turns true before a step: the caller saves and retries later.
    ``after_step(obs, action, reward, next_obs, terminated)`` runs after every
    step (learning while acting: the per-step fine-tuning schedule).
    """
    obs, info = env.reset(seed=seed) if seed is not None else env.reset()
    observations, actions, rewards, task_rewards, terms, truncs = [obs], [], [], [], [], []
    success = [bool(info.get("success", False))]
    goal_fraction = [_goal_fraction(info)]
    goal_held = [info.get("tasks_at_goal")]
    done = False
    while not done and (max_steps is None or len(rewards) < max_steps):
        if stop():
            return None
        action = policy(obs)
        next_obs, reward, terminated, truncated, info = env.step(action)
        if after_step is not None:
            after_step(obs, action, float(reward), next_obs, bool(terminated))
        obs = next_obs
        observations.append(obs)
        actions.append(action)
        rewards.append(float(reward))
        task_rewards.append(float(info.get("task_reward", reward)))
        terms.append(bool(terminated))
        truncs.append(bool(truncated))
        success.append(bool(info.get("success", False)))
        goal_fraction.append(_goal_fraction(info))
        goal_held.append(info.get("tasks_at_goal"))
        done = terminated or truncated
    return Episode(observations, np.asarray(actions, dtype=np.float32), np.asarray(rewards, dtype=np.float64),
                   np.asarray(task_rewards, dtype=np.float64), np.asarray(terms, dtype=bool),
                   np.asarray(truncs, dtype=bool), np.asarray(success, dtype=bool),
                   np.asarray(goal_fraction, dtype=np.float64),
                   None if goal_held[-1] is None else np.asarray([g or 0.0 for g in goal_held], dtype=np.float64))


def _goal_fraction(info: dict) -> float:
    return float(info.get("tasks_solved", float(bool(info.get("success", False)))))
