"""The soft actor-critic layer (Haarnoja et al. 2018) on the shared core: the tanh-squashed Gaussian actor, the
entropy temperature and its loss, and SAC's actor and critic losses for a given TD target. CQL, Cal-QL, SAC,
RLPD and WSRL build on it; agents without a temperature (IQL, TD3+BC) build on ``o2o.agents.core`` directly."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from omegaconf import MISSING
from torch import nn

from o2o import metrics as M
from o2o.agents.core import ActorCritic
from o2o.agents.networks import TanhGaussianActor
from o2o.buffers import Batch
from o2o.config import AlgoConfig, require


@dataclass
class SoftActorConfig(AlgoConfig):
    """Algorithms with the SAC actor: a tanh-Gaussian policy and an entropy temperature."""

    # log-std = multiplier (1) * head output + offset (log_std_offset); with trainable_log_std_transform
    # both train with the actor (the Cal-QL authors')
    trainable_log_std_transform: bool = MISSING
    log_std_offset: float = MISSING
    auto_entropy: bool = MISSING
    init_alpha: float = MISSING
    target_entropy_scale: float = MISSING  # target entropy = -scale * |A| (SAC: 1, RLPD: 1/2)
    backup_entropy: bool = MISSING
    actor_q: str = MISSING  # how the actor's loss reduces the ensemble: min | mean
    actor_layer_norm: bool = MISSING  # LayerNorm after each hidden layer of the policy (WSRL's)
    # the states whose policy entropy the temperature loss measures: obs (the batch's states, SAC's) | next_obs
    # (WSRL's, on the TD target's pi(.|s') samples)
    temperature_states: str = MISSING
    # the actor's (and temperature's) step after the critic's, on the critic as that step left it (RLPD's
    # sac_learner.update, WSRL's update_high_utd), or in one summed step with it, on the critic before it (the Cal-QL
    # authors' _train_step)
    actor_after_critic: bool = MISSING

    def check(self) -> None:
        super().check()
        require(self.actor_q in ("min", "mean"), f"algo.actor_q must be min or mean, got {self.actor_q!r}")
        require(self.init_alpha > 0, f"algo.init_alpha must be > 0, got {self.init_alpha}")
        require(self.temperature_states in ("obs", "next_obs"),
                f"algo.temperature_states must be obs or next_obs, got {self.temperature_states!r}")


class SoftActorCritic(ActorCritic):
    """The core plus SAC's temperature: ``log_alpha`` (trained when ``auto_entropy``, toward the target entropy
    -target_entropy_scale * |A|), stepped with the actor."""

    def __init__(self, obs_dim: int, act_dim: int, cfg: SoftActorConfig, device, precision: str = "fp32",
                 total_updates: int = 0, obs_stats=None):
        super().__init__(obs_dim, act_dim, cfg, device, precision, total_updates, obs_stats)
        self.log_alpha = nn.Parameter(torch.tensor(float(cfg.init_alpha), device=device).log(),
                                      requires_grad=cfg.auto_entropy)
        self.target_entropy = -cfg.target_entropy_scale * act_dim
        self.actor_after_critic = cfg.actor_after_critic

    def make_actor(self) -> nn.Module:
        cfg = self.cfg
        return TanhGaussianActor(self.obs_dim, self.act_dim, cfg.actor_hidden, cfg.orthogonal_init,
                                 cfg.trainable_log_std_transform, cfg.log_std_offset, cfg.actor_layer_norm)

    def build_optimizer(self, extra_groups: list[dict] | None = None) -> None:
        """The core's groups, the temperature's (at the actor's rate) after the actor's and the critic's."""
        own = [{"params": [self.log_alpha], "lr": self.cfg.actor_lr}] if self.cfg.auto_entropy else []
        super().build_optimizer(own + (extra_groups or []))

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

    def actor_side_names(self) -> set[str]:
        return super().actor_side_names() | {"log_alpha"}

    def backup_noise(self, noise: dict) -> torch.Tensor:
        """The noise of the TD target's pi(.|s') samples."""
        return noise["eps_next"]

    def actor_losses(self, batch: Batch, noise: dict) -> tuple[torch.Tensor, dict]:
        with self.autocast():
            mean, log_std = self.actor(batch.obs)
            next_log_pi = None
            if self.cfg.temperature_states == "next_obs":  # the TD target's samples: the same actor, the same noise
                with torch.no_grad():
                    _, next_log_pi = TanhGaussianActor.sample(*self.actor(batch.next_obs), self.backup_noise(noise))
            return self.actor_and_alpha_losses(batch.obs, mean, log_std, noise["eps_actor"], next_log_pi)

    def draw_noise(self, batch_size: int) -> dict:
        return {"eps_actor": torch.randn(batch_size, 1, self.act_dim, device=self.device),
                "eps_next": torch.randn(batch_size, 1, self.act_dim, device=self.device)}

    def actor_and_alpha_losses(self, obs: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor,
                               eps: torch.Tensor, next_log_pi: torch.Tensor | None = None) -> tuple[torch.Tensor, dict]:
        """SAC actor loss alpha * log pi - Q (min or mean over the ensemble), and the entropy-temperature loss on
        the log-densities of ``algo.temperature_states``: the actor's samples at ``obs``, or ``next_log_pi`` (the TD
        target's samples at the next states, every one of them)."""
        actions, log_pi = TanhGaussianActor.sample(mean, log_std, eps)  # (B, 1, A), (B, 1)
        q_all = self.critic(obs, actions, detach_weights=True)  # (E, B, 1): gradients reach the actions only
        q_pi = q_all.mean(0) if self.cfg.actor_q == "mean" else q_all.amin(0)
        actor_loss = (self.alpha.detach() * log_pi - q_pi).mean()
        loss = actor_loss
        if self.cfg.auto_entropy:
            measured = log_pi if self.cfg.temperature_states == "obs" else next_log_pi
            if measured is None:
                raise ValueError("algo.temperature_states=next_obs: pass the TD target's next_log_pi")
            alpha_loss = -(self.log_alpha * (measured.detach() + self.target_entropy)).mean()
            loss = loss + alpha_loss
        return loss, {M.ACTOR_LOSS: actor_loss.detach(), "alpha": self.alpha.detach(),
                      "entropy": -log_pi.detach().mean()}

    def soft_losses(self, batch: Batch, td_target: torch.Tensor, next_log_pi: torch.Tensor, noise: dict,
                    update_actor: bool) -> tuple[torch.Tensor, dict]:
        """SAC's losses for a given TD target (and the log-densities of its next-state samples): every critic's mean
        squared TD error (summed over the ensemble), and with ``update_actor`` the actor's and the temperature's."""
        loss, q_data, critic_metrics = self.td_losses(batch, td_target)
        metrics = {}
        if update_actor:
            with self.autocast():
                mean, log_std = self.actor(batch.obs)
                actor_loss, metrics = self.actor_and_alpha_losses(batch.obs, mean, log_std, noise["eps_actor"],
                                                                  next_log_pi)
            loss = loss + actor_loss
        metrics.update(self.q_metrics(q_data, batch))
        metrics.update(critic_metrics)
        return loss, metrics
