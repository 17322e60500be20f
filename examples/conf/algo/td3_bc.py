"""TD3+BC (Fujimoto & Gu 2021, "A Minimalist Approach to Offline Reinforcement Learning") as an algorithm of one's
own: its config schema, its agent and its registration in this one file, its values in ``td3_bc.yaml`` beside it.

The project also ships TD3+BC, as ``algo=td3bc``: ReBRAC's agent with ReBRAC's additions switched off. This file
is the same algorithm written plainly, the walkthrough of docs/extending.md; tests/test_own_extensions.py checks
that the two compute the same losses from the same weights.

As the authors' code (sfujim/TD3_BC, TD3_BC.py and main.py): a deterministic tanh actor; twin critics trained
every step on r + gamma * min of the target critics at the target actor's action plus clipped Gaussian noise
(``policy_noise`` 0.2, ``noise_clip`` 0.5); every ``actor_update_interval`` (their ``policy_freq``, 2) steps the
actor minimises -lambda Q1(s, pi(s)) + (pi(s) - a)^2 with lambda = alpha / mean |Q1| (alpha 2.5), and only then
do both targets move (tau 0.005); observations normalised by the dataset's mean and standard deviation + 1e-3.

Differs on purpose: the critic and the actor take one summed step, so on an actor step the actor's loss (and
lambda) use the critic as it was before this update's critic step (the authors step the critic first); the
critics' weights start from the core's uniform(+-1/sqrt(fan_in)) with zero biases (PyTorch's default draws the
biases too); online, the actor explores with Gaussian noise of std ``exploration_noise`` (0.1, TD3's
``expl_noise`` in sfujim/TD3 main.py), since TD3+BC's code is offline only. The normaliser needs the offline data
(``pretrain: true``); without it the observations pass unchanged.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from omegaconf import MISSING
from torch import nn

from o2o import metrics as M
from o2o.agents.core import ActorCritic
from o2o.agents.networks import mlp
from o2o.agents.registry import register
from o2o.config import AlgoConfig, require


@dataclass
class TD3BCConfig(AlgoConfig):
    alpha: float = MISSING  # the Q term's weight against behaviour cloning
    policy_noise: float = MISSING  # target policy smoothing: std of the noise on the target actor's action
    noise_clip: float = MISSING  # ... clipped to +-noise_clip
    exploration_noise: float = MISSING  # std of the Gaussian noise on the actor's action when it acts online
    normalize_observations: bool = MISSING

    def check(self) -> None:
        super().check()
        require(self.alpha >= 0, f"algo.alpha must be >= 0, got {self.alpha}")
        for key in ("policy_noise", "noise_clip", "exploration_noise"):
            require(getattr(self, key) >= 0, f"algo.{key} must be >= 0, got {getattr(self, key)}")


class DeterministicActor(nn.Module):
    """a = tanh(MLP(normalised obs)); the actor interface of o2o.agents.core, with Gaussian exploration noise."""

    def __init__(self, normalizer: nn.Module, obs_dim: int, act_dim: int, hidden: list[int], exploration_noise: float):
        super().__init__()
        self.normalizer = normalizer
        self.trunk, width = mlp(obs_dim, hidden)
        self.head = nn.Linear(width, act_dim)
        self.exploration_noise = exploration_noise

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.trunk(self.normalizer(obs))))

    def act(self, obs: torch.Tensor, deterministic: bool, eps: torch.Tensor | None) -> torch.Tensor:
        action = self(obs)
        return action if deterministic else (action + self.exploration_noise * eps[:, 0]).clamp(-1.0, 1.0)


class NormalizedCritic(nn.Module):
    """The core's critic ensemble on normalised observations."""

    def __init__(self, normalizer: nn.Module, critic: nn.Module):
        super().__init__()
        self.normalizer, self.ensemble = normalizer, critic

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, detach_weights: bool = False) -> torch.Tensor:
        return self.ensemble(self.normalizer(obs), actions, detach_weights)


@register("td3_bc", TD3BCConfig)
class TD3BC(ActorCritic):
    def __init__(self, obs_dim: int, act_dim: int, cfg: TD3BCConfig, device, precision: str = "fp32",
                 total_updates: int = 0, obs_stats=None):
        super().__init__(obs_dim, act_dim, cfg, device, precision, total_updates, obs_stats)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.build_optimizer()

    def _normalizer(self) -> nn.Module:
        return self.observation_normalizer(eps=1e-3) if self.cfg.normalize_observations else nn.Identity()

    def make_actor(self) -> nn.Module:
        cfg = self.cfg
        return DeterministicActor(self._normalizer(), self.obs_dim, self.act_dim, cfg.actor_hidden, cfg.exploration_noise)

    def make_critic(self, act_dim: int | None = None, ensemble_size: int | None = None) -> nn.Module:
        return NormalizedCritic(self._normalizer(), super().make_critic(act_dim, ensemble_size))

    def draw_noise(self, batch_size: int) -> dict:
        return {"target_noise": torch.randn(batch_size, 1, self.act_dim, device=self.device)}

    def compute_losses(self, batch, noise: dict, update_actor: bool = True) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        with torch.no_grad():
            smoothing = (noise["target_noise"] * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            next_actions = (self.actor_target(batch.next_obs).unsqueeze(1) + smoothing).clamp(-1.0, 1.0)
            q_next = self.target_min(self.critic_target(batch.next_obs, next_actions), noise)[:, 0]
            td_target = batch.rewards + cfg.gamma * (1.0 - batch.dones) * q_next
        loss, q_data, metrics = self.td_losses(batch, td_target)
        if update_actor:
            with self.autocast():
                pi = self.actor(batch.obs).float()
                q = self.critic(batch.obs, pi.unsqueeze(1), detach_weights=True)[0, :, 0]  # Q1 only, as the authors
            lmbda = cfg.alpha / q.abs().mean().detach()
            bc_loss = F.mse_loss(pi, batch.actions)
            actor_loss = -lmbda * q.mean() + bc_loss
            loss = loss + actor_loss
            metrics.update({M.ACTOR_LOSS: actor_loss.detach(), "bc_loss": bc_loss.detach(), "lambda": lmbda})
        metrics.update(self.q_metrics(q_data, batch))
        return loss, metrics

    def update_targets(self, update_actor: bool) -> None:
        """TD3: both targets move on the delayed actor steps only."""
        if update_actor:
            super().update_targets(update_actor)
            self.polyak_(self.actor_target, self.actor)
