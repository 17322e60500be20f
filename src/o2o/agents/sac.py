"""SAC, and RLPD as SAC with a LayerNorm critic ensemble, a random-subset target and symmetric sampling.

RLPD (Ball et al. 2023) is SAC plus settings, all in ``conf/algo/rlpd.yaml``:
10 LayerNorm critics, the TD target's min over a random subset of 2, the
actor on the ensemble mean, UTD 20 with one actor step per 20 critic steps,
and every batch half offline, half online.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from o2o.agents.networks import TanhGaussianActor
from o2o.agents.registry import register
from o2o.agents.soft import SoftActorConfig, SoftActorCritic
from o2o.buffers import Batch


@dataclass
class SACConfig(SoftActorConfig):
    """SAC and RLPD: the core's knobs are all they need."""


@register("sac", SACConfig)
class SAC(SoftActorCritic):
    def __init__(self, obs_dim: int, act_dim: int, cfg: SACConfig, device, precision: str = "fp32",
                 total_updates: int = 0, obs_stats=None):
        super().__init__(obs_dim, act_dim, cfg, device, precision, total_updates, obs_stats)
        self.build_optimizer()

    def compute_losses(self, batch: Batch, noise: dict, update_actor: bool = True) -> tuple[torch.Tensor, dict]:
        with self.autocast(), torch.no_grad():
            next_actions, next_log_pi = TanhGaussianActor.sample(*self.actor(batch.next_obs), noise["eps_next"])
            q_next = self.target_min(self.critic_target(batch.next_obs, next_actions), noise)[:, 0]  # (B,)
            if self.cfg.backup_entropy:
                q_next = q_next - self.alpha.detach() * next_log_pi[:, 0]
            td_target = batch.rewards + self.cfg.gamma * (1.0 - batch.dones) * q_next
        return self.soft_losses(batch, td_target, next_log_pi, noise, update_actor)
