"""Transition storage on the training device, sampled with one ``index_select`` per draw.

Each buffer keeps all fields of a transition side by side in one preallocated
(capacity, width) tensor: [obs | action | reward | next_obs | done | v_ref].
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class Batch(NamedTuple):
    """A sampled batch of transitions, as the agents' updates take it."""

    obs: torch.Tensor  # (B, D)
    actions: torch.Tensor  # (B, A)
    rewards: torch.Tensor  # (B,) transformed
    next_obs: torch.Tensor  # (B, D)
    dones: torch.Tensor  # (B,) 1.0 at terminals
    v_ref: torch.Tensor  # (B,) the reference value V_ref(s): the return-to-go, or a learned value (o2o.reference)


class TransitionBuffer:
    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device):
        self.obs_dim, self.act_dim, self.device = obs_dim, act_dim, device
        self.width = 2 * obs_dim + act_dim + 3
        self.storage = torch.zeros(capacity, self.width, dtype=torch.float32, device=device)
        self.capacity, self.size, self._next = capacity, 0, 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs, actions, rewards, next_obs, dones, v_ref) -> torch.Tensor:
        """Append a block of transitions (numpy arrays); the oldest are overwritten when full. Returns their rows."""
        n = len(rewards)
        columns = [np.asarray(obs).reshape(n, -1), np.asarray(actions).reshape(n, -1), np.asarray(rewards)[:, None],
                   np.asarray(next_obs).reshape(n, -1), np.asarray(dones)[:, None], np.asarray(v_ref)[:, None]]
        keep = min(n, self.capacity)
        idx = (self._next + torch.arange(keep, device=self.device)) % self.capacity
        # each column block copied straight into its rows (one copy, no intermediate block of rows)
        start, first = self._next, min(keep, self.capacity - self._next)
        for rows, source in ((slice(start, start + first), slice(n - keep, n - keep + first)),
                             (slice(0, keep - first), slice(n - keep + first, n))):
            left = 0
            for column in columns:
                width = column.shape[1]
                block = column[source]
                if len(block):
                    self.storage[rows, left: left + width].copy_(torch.from_numpy(np.ascontiguousarray(block)))
                left += width
        self._next = (self._next + keep) % self.capacity
        self.size = min(self.size + keep, self.capacity)
        return idx

    def rewards(self) -> torch.Tensor:
        """The (transformed) rewards of every stored transition."""
        return self.storage[: self.size, self.obs_dim + self.act_dim]

    def set_v_ref(self, idx: torch.Tensor, v_ref: np.ndarray) -> None:
        """Write the reference values of rows added before they were known (their episode had not ended)."""
        values = torch.as_tensor(np.asarray(v_ref, np.float32), device=self.device)
        self.storage[idx, self.width - 1] = values

    def state(self) -> dict:
        return {"rows": self.storage[: self.size].cpu().clone(), "next": self._next}

    def load_state(self, state: dict) -> None:
        rows = state["rows"]
        self.storage[: len(rows)] = rows.to(self.device)
        self.size, self._next = len(rows), state["next"]

    def sample_rows(self, n: int, generator: torch.Generator | None = None) -> torch.Tensor:
        idx = torch.randint(0, self.size, (n,), device=self.device, generator=generator)
        return self.storage.index_select(0, idx)

    def to_batch(self, rows: torch.Tensor) -> Batch:
        o, a = self.obs_dim, self.act_dim
        obs, actions, rewards, next_obs, dones, v_ref = rows.split([o, a, 1, o, 1, 1], dim=1)
        return Batch(obs, actions, rewards.squeeze(1), next_obs, dones.squeeze(1), v_ref.squeeze(1))

    def sample(self, n: int) -> Batch:
        return self.to_batch(self.sample_rows(n))


def offline_share(batch_size: int, mixing_ratio: float, offline_size: int, online_size: int) -> int:
    """How many of a batch's samples come from the offline data.

    ``mixing_ratio`` is the offline fraction; -1 means proportional to the
    buffers' sizes. An empty online buffer leaves everything to the offline data.
    """
    if online_size == 0:
        return batch_size
    if offline_size == 0:
        return 0
    ratio = offline_size / (offline_size + online_size) if mixing_ratio < 0 else mixing_ratio
    return int(round(batch_size * ratio))


class MixedSampler:
    """Batches drawn from the offline data and the online buffer by the mixing ratio.

    Without offline data (``offline=None``, online SAC) every sample is online.
    """

    def __init__(self, offline: TransitionBuffer | None, online: TransitionBuffer, batch_size: int,
                 mixing_ratio: float):
        self.offline, self.online = offline, online
        self.batch_size, self.mixing_ratio = batch_size, mixing_ratio

    def sample(self) -> Batch:
        offline_size = len(self.offline) if self.offline is not None else 0
        n_off = offline_share(self.batch_size, self.mixing_ratio, offline_size, len(self.online))
        parts = []
        if n_off:
            parts.append(self.offline.sample_rows(n_off))
        if self.batch_size - n_off:
            parts.append(self.online.sample_rows(self.batch_size - n_off))
        return self.online.to_batch(torch.cat(parts) if len(parts) > 1 else parts[0])
