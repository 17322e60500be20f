"""Transition storage on the training device, sampled with one ``index_select`` per draw.

Each buffer keeps all fields of a transition side by side in one preallocated
(capacity, width) tensor: [obs | action | reward | next_obs | done | v_ref], and, for an algorithm that reads
them (``AlgoConfig.reads_next_actions``: ReBRAC's critic penalty), [... | next_action]: the action the data took
at next_obs.

Image observations (an ``obs_shape`` of (H, W, C)) stay uint8: they live in a second (capacity, 2 * obs_dim) uint8
tensor, [obs | next_obs] flattened (H * W * C each), and the float rows hold the rest. A batch then carries them as
uint8 (B, obs_dim) to the device, and the agent's encoder turns them into floats (o2o.agents.encoders). A sampled
"row" is the pair (float rows, frame rows or None).
"""
from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class Batch(NamedTuple):
    """A sampled batch of transitions, as the agents' updates take it."""

    obs: torch.Tensor  # (B, D) float32, or uint8 flattened frames (B, H * W * C)
    actions: torch.Tensor  # (B, A)
    rewards: torch.Tensor  # (B,) transformed
    next_obs: torch.Tensor  # (B, D), as obs
    dones: torch.Tensor  # (B,) 1.0 at terminals
    v_ref: torch.Tensor  # (B,) the reference value V_ref(s): the return-to-go, or a learned value (o2o.reference)
    next_actions: torch.Tensor | None = None  # (B, A) the data's action at next_obs, where the buffers keep it


Rows = tuple  # (float rows (n, width), frame rows (n, 2 * obs_dim) uint8 or None)


class TransitionBuffer:
    def __init__(self, capacity: int, obs_dim: int, act_dim: int, device: torch.device, next_actions: bool = False,
                 obs_shape: tuple | None = None):
        """``obs_shape``: one observation's shape; (H, W, C) for uint8 frames, kept flat (``obs_dim`` long)."""
        self.obs_dim, self.act_dim, self.device = obs_dim, act_dim, device
        self.obs_shape = tuple(obs_shape) if obs_shape is not None else (obs_dim,)
        self.next_actions, self.frames = next_actions, len(self.obs_shape) == 3
        self.float_obs = 0 if self.frames else obs_dim  # observation floats in a float row
        self.obs_dtype = np.uint8 if self.frames else np.float32
        self.v_ref_column = 2 * self.float_obs + act_dim + 2
        self.width = row_width(self.float_obs, act_dim, next_actions)
        self.storage = torch.zeros(capacity, self.width, dtype=torch.float32, device=device)
        self.frame_storage = (torch.zeros(capacity, 2 * obs_dim, dtype=torch.uint8, device=device) if self.frames
                              else None)
        self.capacity, self.size, self._next = capacity, 0, 0

    def __len__(self) -> int:
        return self.size

    def add(self, obs, actions, rewards, next_obs, dones, v_ref, next_actions=None) -> torch.Tensor:
        """Append a block of transitions (numpy arrays); the oldest are overwritten when full. Returns their rows.
        ``next_actions``: where the buffer keeps them; None leaves zeros until :meth:`set_next_actions`."""
        n = len(rewards)
        obs_columns = [np.asarray(obs).reshape(n, -1), np.asarray(next_obs).reshape(n, -1)]
        if self.frames and any(c.dtype != np.uint8 for c in obs_columns):
            raise TypeError("image observations must be uint8 frames")
        float_columns = [np.asarray(actions).reshape(n, -1), np.asarray(rewards)[:, None],
                         np.asarray(dones)[:, None], np.asarray(v_ref)[:, None]]
        if not self.frames:
            float_columns = [obs_columns[0], float_columns[0], float_columns[1], obs_columns[1], *float_columns[2:]]
        if self.next_actions:
            float_columns.append(np.zeros((n, self.act_dim), np.float32) if next_actions is None
                                 else np.asarray(next_actions).reshape(n, -1))
        keep = min(n, self.capacity)
        idx = (self._next + torch.arange(keep, device=self.device)) % self.capacity
        targets = [(self.storage, float_columns, torch.float32)]
        if self.frames:
            targets.append((self.frame_storage, obs_columns, torch.uint8))
        # each column block copied straight into its rows (one copy, no intermediate block of rows)
        start, first = self._next, min(keep, self.capacity - self._next)
        for rows, source in ((slice(start, start + first), slice(n - keep, n - keep + first)),
                             (slice(0, keep - first), slice(n - keep + first, n))):
            for storage, columns, dtype in targets:
                left = 0
                for column in columns:
                    width = column.shape[1]
                    block = column[source]
                    if len(block):
                        storage[rows, left: left + width].copy_(
                            torch.from_numpy(np.ascontiguousarray(block)).to(dtype))
                    left += width
        self._next = (self._next + keep) % self.capacity
        self.size = min(self.size + keep, self.capacity)
        return idx

    def rewards(self) -> torch.Tensor:
        """The (transformed) rewards of every stored transition."""
        return self.storage[: self.size, self.float_obs + self.act_dim]

    def set_all_v_ref(self, value: float) -> None:
        """One reference value for every stored transition (a quantile reference's threshold)."""
        self.storage[: self.size, self.v_ref_column] = value

    def observations(self, idx: torch.Tensor) -> torch.Tensor:
        """The observations of the given rows, as stored (float32, or uint8 frames)."""
        if self.frames:
            return self.frame_storage[idx, : self.obs_dim]
        return self.storage[idx, : self.obs_dim]

    def set_v_ref(self, idx: torch.Tensor, v_ref: np.ndarray) -> None:
        """Write the reference values of rows added before they were known (their episode had not ended)."""
        values = torch.as_tensor(np.asarray(v_ref, np.float32), device=self.device)
        self.storage[idx, self.v_ref_column] = values

    def set_next_actions(self, idx: torch.Tensor, actions: np.ndarray) -> None:
        """Write, for an episode's rows in order, the action taken after each: the next row's; the last row's own
        action where the episode ended (a terminal bootstraps nothing; after a time limit the next action is not
        known)."""
        if not self.next_actions or not len(idx):
            return
        actions = np.asarray(actions, np.float32).reshape(-1, self.act_dim)[-len(idx):]  # the rows kept
        actions = torch.as_tensor(actions, device=self.device)
        self.storage[idx, self.v_ref_column + 1:] = torch.cat([actions[1:], actions[-1:]])

    def state(self) -> dict:
        state = {"rows": self.storage[: self.size].cpu().clone(), "next": self._next}
        if self.frames:
            state["frames"] = self.frame_storage[: self.size].cpu().clone()
        return state

    def load_state(self, state: dict) -> None:
        rows = state["rows"]
        self.storage[: len(rows)] = rows.to(self.device)
        if self.frames:
            self.frame_storage[: len(rows)] = state["frames"].to(self.device)
        self.size, self._next = len(rows), state["next"]

    def rows(self, idx: torch.Tensor | slice | None = None) -> Rows:
        """The stored rows at ``idx`` (a tensor of indices or a slice; None: every stored row)."""
        idx = slice(0, self.size) if idx is None else idx
        pick = (lambda t: t[idx]) if isinstance(idx, slice) else (lambda t: t.index_select(0, idx))
        return pick(self.storage), (pick(self.frame_storage) if self.frames else None)

    def batch(self, idx: torch.Tensor | slice | None = None) -> Batch:
        """The stored transitions at ``idx`` (None: all of them) as a batch."""
        return self.to_batch(self.rows(idx))

    def sample_rows(self, n: int, generator: torch.Generator | None = None) -> Rows:
        return self.rows(torch.randint(0, self.size, (n,), device=self.device, generator=generator))

    def to_batch(self, rows: Rows) -> Batch:
        floats, frames = rows
        o, a = self.float_obs, self.act_dim
        if self.next_actions:
            obs, actions, rewards, next_obs, dones, v_ref, next_actions = floats.split([o, a, 1, o, 1, 1, a], dim=1)
        else:
            (obs, actions, rewards, next_obs, dones, v_ref), next_actions = floats.split([o, a, 1, o, 1, 1], dim=1), None
        if frames is not None:
            obs, next_obs = frames.split([self.obs_dim, self.obs_dim], dim=1)
        return Batch(obs, actions, rewards.squeeze(1), next_obs, dones.squeeze(1), v_ref.squeeze(1), next_actions)

    def sample(self, n: int) -> Batch:
        return self.to_batch(self.sample_rows(n))


def row_width(obs_dim: int, act_dim: int, next_actions: bool = False) -> int:
    """Floats in one stored transition (``obs_dim`` 0 for frames, which are kept apart)."""
    return 2 * obs_dim + act_dim + 3 + (act_dim if next_actions else 0)


def transition_bytes(obs_dim: int, act_dim: int, next_actions: bool = False, frames: bool = False) -> int:
    """Bytes one stored transition takes: its float row, and its two uint8 frames where observations are images."""
    return 4 * row_width(0 if frames else obs_dim, act_dim, next_actions) + (2 * obs_dim if frames else 0)


def episode_next_actions(actions: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """For transitions in order with episode ends marked: the action of the next step of the same episode; at an
    end, the step's own (see :meth:`TransitionBuffer.set_next_actions`)."""
    following = np.concatenate([actions[1:], actions[-1:]]) if len(actions) else actions
    return np.where(np.asarray(ends, bool)[:, None], actions, following)


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
        if len(parts) == 1:
            return self.online.to_batch(parts[0])
        return self.online.to_batch(tuple(None if p[0] is None else torch.cat(p) for p in zip(*parts)))
