"""Labelling. Transformed rewards and reference returns V_ref(s), the Monte-Carlo return-to-go.

One function, :func:`label_rewards`, labels offline data and online episodes
alike: rewards become ``r * scale + bias`` (the algorithm's transform), then
discounted returns-to-go are computed episode by episode (episodes split at
terminals and timeouts) by :func:`reference_returns`, which online episodes call
directly on the rewards they transformed as they were stored. In sparse tasks an episode whose every reward is the
failure reward gets ``fail_reward / (1 - gamma)`` at every step, as in the
Cal-QL authors' code.
"""
from __future__ import annotations

from typing import Optional

import numpy as np

from o2o.config import AlgoConfig, DomainConfig


def transform_reward(reward, algo: AlgoConfig):
    """The reward the learner sees: ``r * reward_scale + reward_bias`` (arrays or scalars)."""
    return reward * algo.reward_scale + algo.reward_bias


def label_rewards(raw_rewards: np.ndarray, episode_ends: np.ndarray, domain: DomainConfig, algo: AlgoConfig,
                  terminals: Optional[np.ndarray] = None) -> tuple[np.ndarray, np.ndarray]:
    """(transformed rewards, returns-to-go) for a flat array of recorded rewards, float32 both."""
    rewards = transform_reward(np.asarray(raw_rewards, dtype=np.float32), algo)
    return rewards, reference_returns(rewards, episode_ends, domain, algo, terminals)


def reference_returns(rewards: np.ndarray, episode_ends: np.ndarray, domain: DomainConfig, algo: AlgoConfig,
                      terminals: Optional[np.ndarray] = None) -> np.ndarray:
    """The returns-to-go of already transformed rewards, with the domain's sparse failure rule and, where the domain
    says so (``domain.infinite_horizon``), the tail bootstrapped after each episode end that is not a terminal
    (``terminals``: True at terminal steps; None: none)."""
    fail_reward = float(transform_reward(domain.fail_reward, algo)) if domain.sparse else None
    tails = None
    if domain.infinite_horizon:
        tails = np.asarray(episode_ends, bool) & ~(np.zeros(len(rewards), bool) if terminals is None
                                                   else np.asarray(terminals, bool))
    return returns_to_go(rewards, episode_ends, algo.gamma, fail_reward, tails)


def discounted_returns(rewards: np.ndarray, gamma: float) -> np.ndarray:
    """G_t = sum_k gamma^k r_{t+k} over one episode."""
    from scipy.signal import lfilter  # scipy.signal takes about 1 s to import: not on the way to a config error

    return lfilter([1.0], [1.0, -gamma], rewards[::-1].astype(np.float64))[::-1]


def returns_to_go(rewards: np.ndarray, episode_ends: np.ndarray, gamma: float,
                  fail_reward: Optional[float] = None, tails: Optional[np.ndarray] = None) -> np.ndarray:
    """Returns-to-go for a flat array of transformed rewards.

    ``episode_ends`` is True at the last step of each episode. ``fail_reward``
    (already transformed) turns on the sparse failure rule. ``tails``, True at
    an episode's last step T, continues the return past it as if r_T repeated
    for ever: G_t = sum_{k=t..T} gamma^(k-t) r_k + gamma^(T-t+1) r_T / (1 - gamma)
    (calc_return_to_go with infinite_horizon=True, as the Cal-QL authors run Kitchen: nakamotoo/Cal-QL branch
    dev/add-kitchen, JaxCQL/replay_buffer.py and sampler.py).
    """
    rewards = np.asarray(rewards, dtype=np.float64)
    out = np.empty_like(rewards)
    stops = np.flatnonzero(episode_ends) + 1
    if len(rewards) and (len(stops) == 0 or stops[-1] != len(rewards)):
        stops = np.append(stops, len(rewards))
    start = 0
    for stop in stops:
        episode = rewards[start:stop]
        if fail_reward is not None and np.allclose(episode, fail_reward):
            out[start:stop] = fail_reward / (1.0 - gamma)
        else:
            out[start:stop] = discounted_returns(episode, gamma)
            if tails is not None and tails[stop - 1]:
                steps_to_end = np.arange(stop - start, 0, -1)  # T - t + 1 for t = start .. T
                out[start:stop] += gamma ** steps_to_end * episode[-1] / (1.0 - gamma)
        start = stop
    return out.astype(np.float32)
