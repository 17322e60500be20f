"""CQL and Cal-QL: one agent, one switch.

Cal-QL changes a single line of CQL: inside the conservative regulariser the
Q-values of policy actions (sampled from pi(.|s) and pi(.|s'), both scored at
s) are bounded below by the reference return V_ref(s) before the importance
sampling correction. Random-action and dataset-action Q-values are untouched.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import torch
from omegaconf import MISSING

from o2o import metrics as M
from o2o.agents.networks import TanhGaussianActor
from o2o.agents.registry import register
from o2o.agents.soft import SoftActorConfig, SoftActorCritic
from o2o.buffers import Batch
from o2o.config import require
from o2o.metrics import ONLINE


@dataclass
class CQLConfig(SoftActorConfig):
    """CQL, and Cal-QL as its calibration switch (``calibrate_offline`` / ``calibrate_online``)."""

    cql_weight: float = MISSING
    lagrange: bool = MISSING
    target_action_gap: float = MISSING
    importance_sampling: bool = MISSING
    temperature: float = MISSING
    n_actions: int = MISSING
    max_target_backup: bool = MISSING
    backup_actions: int = MISSING  # pi(.|s') samples whose max the max-target backup takes
    # Cal-QL: bound policy-action Q-values by the reference return, per phase
    calibrate_offline: bool = MISSING
    calibrate_online: bool = MISSING
    # Fine-tuning: with the regulariser (CQL, Cal-QL: their authors keep it) or as plain SAC (WSRL), and its
    # own max-target backup (WSRL's SAC agent: only on AntMaze)
    online_regulariser: bool = MISSING
    online_max_target_backup: bool = MISSING
    # ... and its own actor step interval (WSRL: one actor step per block of 4 critic steps online, every step in its
    # Cal-QL pre-training)
    online_actor_update_interval: int = MISSING
    # ... and its own order of the actor's step (WSRL: after the block's critic steps online, summed with them in its
    # CQL pre-training)
    online_actor_after_critic: bool = MISSING

    def check(self) -> None:
        super().check()
        require(self.online_actor_update_interval >= 1,
                f"algo.online_actor_update_interval must be >= 1, got {self.online_actor_update_interval}")
        require(self.cql_weight >= 0, f"algo.cql_weight must be >= 0, got {self.cql_weight}")
        require(self.temperature > 0, f"algo.temperature must be > 0, got {self.temperature}")
        require(self.n_actions >= 1, f"algo.n_actions must be >= 1, got {self.n_actions}")
        require(self.backup_actions >= 1, f"algo.backup_actions must be >= 1, got {self.backup_actions}")
        require(not (self.calibrate_online and self.update_schedule == "step"),
                "algo.update_schedule=step with algo.calibrate_online=true: Cal-QL's bound reads an episode's V_ref, "
                "known only when the episode ends, and the step schedule updates during it; use "
                "algo.update_schedule=episode (the Cal-QL authors') or algo.calibrate_online=false")

    def conservative_retraining(self) -> "CQLConfig":
        return dataclasses.replace(self, calibrate_offline=False, calibrate_online=False)



def calql_bound(q_current: torch.Tensor, q_next: torch.Tensor, v_ref: torch.Tensor):
    """Cal-QL: policy-action Q-values become max(Q, V_ref(s)); also the fraction that was lifted."""
    bound_rate = (torch.cat([q_current, q_next], dim=-1) < v_ref).float().mean()
    return torch.maximum(q_current, v_ref), torch.maximum(q_next, v_ref), bound_rate


@register("cql", CQLConfig)
class CQL(SoftActorCritic):
    def __init__(self, obs_dim: int, act_dim: int, cfg: CQLConfig, device, precision: str = "fp32",
                 total_updates: int = 0, obs_stats=None):
        super().__init__(obs_dim, act_dim, cfg, device, precision, total_updates, obs_stats)
        extra = []
        if cfg.lagrange:
            self.log_alpha_prime = torch.nn.Parameter(torch.tensor(1.0, device=device))
            extra.append({"params": [self.log_alpha_prime], "lr": cfg.critic_lr})
        self.build_optimizer(extra)
        self.calibrate = False  # set per phase by begin_phase
        self.regularise = True  # CQL's regulariser; off while fine-tuning as plain SAC (WSRL)
        self.max_target_backup = cfg.max_target_backup
        self.target_bounds: tuple[float, float] | None = None  # (min, max) of the target Q (OOO's retraining)

    @property
    def n_backup(self) -> int:
        return self.cfg.backup_actions if self.max_target_backup else 1

    def draw_noise(self, batch_size: int) -> dict:
        n, a, dev = self.cfg.n_actions, self.act_dim, self.device
        if not self.regularise:  # SAC's losses: the actor's sample and the backup's
            return {"eps_actor": torch.randn(batch_size, 1, a, device=dev),
                    "eps_next": torch.randn(batch_size, self.n_backup, a, device=dev)}
        return {
            "random_actions": torch.rand(batch_size, n, a, device=dev) * 2.0 - 1.0,
            "eps_actor": torch.randn(batch_size, 1, a, device=dev),  # pi(.|s) for the actor loss
            "eps_current": torch.randn(batch_size, n, a, device=dev),  # pi(.|s) for the regulariser
            "eps_next": torch.randn(batch_size, n + self.n_backup, a, device=dev),  # pi(.|s'): regulariser + backup
        }

    def begin_phase(self, phase: str) -> None:
        """Cal-QL's switch: calibrate offline and/or online as ``algo.calibrate_offline/online`` say; and whether
        fine-tuning keeps the regulariser (``algo.online_regulariser``; WSRL fine-tunes as SAC), its backup and its
        actor step interval."""
        super().begin_phase(phase)
        online = phase == ONLINE  # retraining is offline
        self.calibrate = self.cfg.calibrate_online if online else self.cfg.calibrate_offline
        self.regularise = self.cfg.online_regulariser if online else True
        self.max_target_backup = self.cfg.online_max_target_backup if online else self.cfg.max_target_backup
        self.actor_interval = self.cfg.online_actor_update_interval if online else self.cfg.actor_update_interval
        self.actor_after_critic = self.cfg.online_actor_after_critic if online else self.cfg.actor_after_critic

    def backup_noise(self, noise: dict) -> torch.Tensor:
        """With the regulariser, pi(.|s') is drawn for it first (n_actions), then for the backup."""
        return noise["eps_next"][:, self.cfg.n_actions:] if self.regularise else noise["eps_next"]

    def idle_names(self) -> set[str]:
        """Without the regulariser (WSRL's SAC phase) the Lagrange multiplier has no loss."""
        return {"log_alpha_prime"} if self.cfg.lagrange and not self.regularise else set()

    def compute_losses(self, batch: Batch, noise: dict, update_actor: bool = True) -> tuple[torch.Tensor, dict]:
        if not self.regularise:
            return self.sac_losses(batch, noise, update_actor)
        cfg, n = self.cfg, self.cfg.n_actions
        with self.autocast():
            mean, log_std = self.actor(batch.obs)
            with torch.no_grad():
                next_mean, next_log_std = self.actor(batch.next_obs)
                current_actions, current_log_pi = TanhGaussianActor.sample(
                    mean.detach(), log_std.detach(), noise["eps_current"])
                next_actions, next_log_pi = TanhGaussianActor.sample(next_mean, next_log_std, noise["eps_next"])
                td_target = self._td_target(batch, next_actions[:, n:], next_log_pi[:, n:], noise)

            # Every Q(s, .) the critic loss needs, in one ensemble pass:
            # [data action | n random | n from pi(.|s) | n from pi(.|s')]
            actions = torch.cat([batch.actions.unsqueeze(1), noise["random_actions"], current_actions,
                                 next_actions[:, :n]], dim=1)
            q_all = self.critic(batch.obs, actions)  # (E, B, 1 + 3n)
        q_data = q_all[..., 0]
        q_random, q_current, q_next = q_all[..., 1:].split(n, dim=-1)

        metrics = {M.Q_POLICY: q_current.detach().mean()}  # before Cal-QL's bound: the critic's own Q(s, a ~ pi)
        if self.calibrate:
            q_current, q_next, metrics[M.CALQL_BOUND_RATE] = calql_bound(q_current, q_next,
                                                                         batch.v_ref.view(1, -1, 1))

        if cfg.importance_sampling:
            random_log_density = self.act_dim * math.log(0.5)
            candidates = [q_random - random_log_density, q_next - next_log_pi[:, :n], q_current - current_log_pi]
        else:
            candidates = [q_random, q_data.unsqueeze(-1), q_next, q_current]
        q_ood = torch.logsumexp(torch.cat(candidates, dim=-1) / cfg.temperature, dim=-1) * cfg.temperature
        cql_gap = (q_ood - q_data).mean(dim=1)  # (E,)
        td_loss = (q_data - td_target).pow(2).mean(dim=1)  # (E,)

        if cfg.lagrange:
            alpha_prime = self.log_alpha_prime.exp().clamp(0.0, 1e6)
            cql_loss = alpha_prime.detach() * cfg.cql_weight * (cql_gap - cfg.target_action_gap)
            alpha_prime_loss = -(alpha_prime * cfg.cql_weight * (cql_gap.detach() - cfg.target_action_gap)).mean()
            metrics["alpha_prime"] = alpha_prime.detach()
        else:
            cql_loss = cfg.cql_weight * cql_gap
            alpha_prime_loss = 0.0
        critic_loss = (td_loss + cql_loss).sum()

        loss = critic_loss + alpha_prime_loss
        if update_actor:
            with self.autocast():
                actor_loss, actor_metrics = self.actor_and_alpha_losses(batch.obs, mean, log_std, noise["eps_actor"],
                                                                        next_log_pi[:, n:])
            loss = loss + actor_loss
            metrics.update(actor_metrics)
        metrics.update(self.q_metrics(q_data, batch))
        metrics.update({
            M.CRITIC_LOSS: critic_loss.detach(), M.TD_LOSS: td_loss.detach().mean(),
            "cql_gap": cql_gap.detach().mean(), "q_random": q_random.detach().mean(), M.TD_TARGET: td_target.mean(),
        })
        return loss, metrics

    def sac_losses(self, batch: Batch, noise: dict, update_actor: bool) -> tuple[torch.Tensor, dict]:
        """SAC's losses on the same networks, without the regulariser: WSRL's fine-tuning (zhouzypaul/wsrl,
        wsrl/agents/sac.py: every critic's TD error against the min over a random subset of target critics, the
        actor on the min over the ensemble)."""
        with self.autocast(), torch.no_grad():
            next_actions, next_log_pi = TanhGaussianActor.sample(*self.actor(batch.next_obs), noise["eps_next"])
            td_target = self._td_target(batch, next_actions, next_log_pi, noise)
        return self.soft_losses(batch, td_target, next_log_pi, noise, update_actor)

    def _td_target(self, batch: Batch, next_actions: torch.Tensor, next_log_pi: torch.Tensor, noise: dict) -> torch.Tensor:
        """r + gamma (1 - done) Q_target(s', a'); with max-target backup the a' of the highest Q among the sampled
        ones, then the bound (OOO), then the entropy of that a' (as the authors' conservative_sac.py orders them)."""
        q_next = self.target_min(self.critic_target(batch.next_obs, next_actions), noise)  # (B, K)
        if self.max_target_backup:
            best = q_next.argmax(dim=1, keepdim=True)
            q_next, next_log_pi = q_next.gather(1, best)[:, 0], next_log_pi.gather(1, best)[:, 0]
        else:
            q_next, next_log_pi = q_next[:, 0], next_log_pi[:, 0]
        if self.target_bounds is not None:
            q_next = q_next.clamp(*self.target_bounds)
        if self.cfg.backup_entropy:
            q_next = q_next - self.alpha.detach() * next_log_pi
        return batch.rewards + self.cfg.gamma * (1.0 - batch.dones) * q_next
