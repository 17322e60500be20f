"""An offline dataset as flat transition arrays with episode boundaries, whatever its source (o2o.data.dataset)."""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Optional

import numpy as np

from o2o.errors import DatasetError


@dataclass


class OfflineData:
    observations: np.ndarray  # (N, obs_dim) float32
    actions: np.ndarray  # (N, act_dim) float32
    rewards: np.ndarray  # (N,) float32, as recorded (before the reward transform)
    next_observations: np.ndarray  # (N, obs_dim) float32
    terminals: np.ndarray  # (N,) bool
    timeouts: np.ndarray  # (N,) bool: episode cut without a terminal
    success: Optional[np.ndarray] = None  # (N,) bool, task success after each step
    ref_min_score: Optional[float] = None
    ref_max_score: Optional[float] = None
    source: str = ""
    metadata: dict = field(default_factory=dict)
    # the recorded episodes' last steps where success terminals split them further (apply_binary_success); None: as
    # episode_ends
    recorded_ends: Optional[np.ndarray] = None

    def __len__(self) -> int:
        return len(self.rewards)

    @property
    def episode_ends(self) -> np.ndarray:
        """True at the last step of every episode (terminal, timeout or end of data)."""
        ends = self.terminals | self.timeouts
        if len(ends):
            ends = ends.copy()
            ends[-1] = True
        return ends

    @property
    def recorded_episode_ends(self) -> np.ndarray:
        """True at the last step of every recorded episode: not at each success the Adroit rule made terminal."""
        return self.episode_ends if self.recorded_ends is None else self.recorded_ends

    @property
    def num_episodes(self) -> int:
        return int(self.episode_ends.sum())

    def select(self, mask: np.ndarray) -> "OfflineData":
        keep = lambda a: None if a is None else a[mask]  # noqa: E731
        return replace(self, observations=self.observations[mask], actions=self.actions[mask],
                       rewards=self.rewards[mask], next_observations=self.next_observations[mask],
                       terminals=self.terminals[mask], timeouts=self.timeouts[mask], success=keep(self.success),
                       recorded_ends=keep(self.recorded_ends))


def episode_slices(ends: np.ndarray) -> list[slice]:
    stops = np.flatnonzero(ends) + 1
    starts = np.concatenate([[0], stops[:-1]])
    return [slice(int(a), int(b)) for a, b in zip(starts, stops)]


def apply_binary_success(data: OfflineData) -> OfflineData:
    """The Cal-QL authors' Adroit handling of offline data.

    Reward -1 per step and 0 on success; success steps are terminal; each
    episode is cut after its last success, so an episode that never succeeds
    keeps no steps.
    """
    if data.success is None:
        raise DatasetError(f"{data.source}: domain.binary_from_success needs per-step task success "
                           "(infos/success in Minari, infos/goal_achieved in D4RL HDF5), and this dataset has none")
    keep, recorded_ends = np.zeros(len(data), dtype=bool), np.zeros(len(data), dtype=bool)
    for episode in episode_slices(data.episode_ends):
        hits = np.flatnonzero(data.success[episode])
        if len(hits):
            keep[episode.start:episode.start + hits[-1] + 1] = True
            recorded_ends[episode.start + hits[-1]] = True  # the episode, cut after its last success, ends there
    binary = replace(data, rewards=np.where(data.success, 0.0, -1.0).astype(np.float32),
                     terminals=data.terminals | data.success, recorded_ends=recorded_ends)
    return binary.select(keep)


def float_or_none(value) -> Optional[float]:
    """A reference score as stored (a number, a numpy scalar, or absent)."""
    return None if value is None else float(value)
