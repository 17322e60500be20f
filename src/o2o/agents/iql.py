"""IQL (Kostrikov et al. 2022): expectile value regression, Q against V, advantage-weighted policy extraction.

As the authors' code (ikostrikov/implicit_q_learning, learner.py, actor.py, critic.py, policy.py) and CORL's
``algorithms/finetune/iql.py``: a Gaussian policy with a tanh mean and a state-independent log-std
(``GaussianActor``), its learning rate on a cosine decay over all updates, twin Q-functions and a value
function; V regresses min(Q_target) by the expectile, Q regresses r + gamma V(s'), the policy maximises
exp(beta (Q_target - V)) (clipped at 100) times log pi(a|s). Each update steps V first, then Q and the actor with
the new V, as the authors' learner.py (update_v, awr_update_actor and update_q on new_value).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from omegaconf import MISSING

from o2o import metrics as M
from o2o.agents.core import ActorCritic
from o2o.agents.networks import GaussianActor
from o2o.agents.registry import register
from o2o.buffers import Batch
from o2o.config import AlgoConfig, require


@dataclass
class IQLConfig(AlgoConfig):
    expectile: float = MISSING
    awr_temperature: float = MISSING
    awr_max_weight: float = MISSING
    actor_dropout: float = MISSING  # after each hidden layer of the policy (the authors': 0.1 on Adroit)
    # the policy's learning rate over all updates (offline + online): constant, or cosine decay to 0
    actor_lr_schedule: str = MISSING

    def check(self) -> None:
        super().check()
        require(0 < self.expectile < 1, f"algo.expectile must be in (0, 1), got {self.expectile}")
        require(self.awr_temperature >= 0, f"algo.awr_temperature must be >= 0, got {self.awr_temperature}")
        require(0 <= self.actor_dropout < 1, f"algo.actor_dropout must be in [0, 1), got {self.actor_dropout}")
        require(self.actor_lr_schedule in ("constant", "cosine"),
                 f"algo.actor_lr_schedule must be constant or cosine, got {self.actor_lr_schedule!r}")


def expectile_loss(diff: torch.Tensor, expectile: float) -> torch.Tensor:
    """mean |tau - 1(diff < 0)| * diff^2, with diff = Q(s, a) - V(s)."""
    weight = torch.where(diff < 0, 1.0 - expectile, expectile)
    return (weight * diff.pow(2)).mean()


def advantage_weights(advantage: torch.Tensor, temperature: float, max_weight: float) -> torch.Tensor:
    """exp(temperature * A(s, a)), clipped at max_weight."""
    return torch.exp(temperature * advantage).clamp(max=max_weight)


@register("iql", IQLConfig)
class IQL(ActorCritic):
    def __init__(self, obs_dim: int, act_dim: int, cfg: IQLConfig, device, precision: str = "fp32",
                 total_updates: int = 0, obs_stats=None):
        super().__init__(obs_dim, act_dim, cfg, device, precision, total_updates, obs_stats)
        self.value = self.encoded(self.make_critic(act_dim=0, ensemble_size=1)).to(device)  # V(s): a critic without actions
        self._no_action = torch.zeros(1, 1, 0, device=device)
        self.build_optimizer([{"params": list(self.value.parameters()), "lr": cfg.critic_lr}])
        horizon = max(total_updates, 1)
        actor_factor = ((lambda t: 0.5 * (1.0 + math.cos(math.pi * min(t, horizon) / horizon)))
                        if cfg.actor_lr_schedule == "cosine" else (lambda t: 1.0))
        # the actor's group is the optimizer's first; the others keep their rate
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, [actor_factor] + [lambda t: 1.0] * (len(self.optimizer.param_groups) - 1))

    def make_actor(self):
        return GaussianActor(self.obs_dim, self.act_dim, self.cfg.actor_hidden, self.cfg.actor_dropout,
                             self.cfg.orthogonal_init)

    def after_step(self) -> None:
        self.scheduler.step()

    def checkpoint(self) -> dict:
        return {**super().checkpoint(), "scheduler": self.scheduler.state_dict()}

    def restore(self, state: dict) -> None:
        super().restore(state)
        self.scheduler.load_state_dict(state["scheduler"])

    def v(self, obs: torch.Tensor) -> torch.Tensor:
        return self.value(obs, self._no_action.expand(obs.shape[0], 1, 0))[0, :, 0]

    def q_target(self, batch: Batch, noise: dict) -> torch.Tensor:
        """min Q_target(s, a) on the batch's actions; the value step computes it and the main step reuses it
        (``noise["q_target"]``): the target critic does not move in between."""
        if "q_target" in noise:
            return noise["q_target"]
        with self.autocast(), torch.no_grad():
            return self.target_min(self.critic_target(batch.obs, batch.actions.unsqueeze(1)), noise)[:, 0]

    def value_loss(self, batch: Batch, noise: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """The expectile regression of V(s) on min Q_target(s, a); returns the loss and V(s)."""
        q_target = self.q_target(batch, noise)
        with self.autocast():
            v = self.v(batch.obs)
        return expectile_loss(q_target - v, self.cfg.expectile), v

    def pre_update(self, batch: Batch, noise: dict) -> dict:
        """V's own step first, as the authors' learner.py (update_v, then the actor and Q with the new value)."""
        noise["q_target"] = self.q_target(batch, noise)  # an input of the main step too, computed once
        loss, v = self.value_loss(batch, noise)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()  # only V has gradients: Adam leaves the other parameters and their state alone
        return {"value_loss": loss.detach(), "v": v.detach().mean()}

    def pre_updated_names(self) -> set[str]:
        return {name for name, _ in self.value.named_parameters(prefix="value")}

    def compute_losses(self, batch: Batch, noise: dict, update_actor: bool = True) -> tuple[torch.Tensor, dict]:
        """Q and the actor against V as it stands: the value just updated by :meth:`pre_update`."""
        cfg = self.cfg
        q_target = self.q_target(batch, noise)
        with self.autocast():
            with torch.no_grad():
                v = self.v(batch.obs)
                td_target = batch.rewards + cfg.gamma * (1.0 - batch.dones) * self.v(batch.next_obs)
        loss, q_data, critic_metrics = self.td_losses(batch, td_target)
        metrics = {}
        if update_actor:
            weights = advantage_weights(q_target - v, cfg.awr_temperature, cfg.awr_max_weight)
            with self.autocast():
                mean, log_std = self.actor(batch.obs)
            log_pi = GaussianActor.log_prob(mean, log_std, batch.actions)
            actor_loss = -(weights * log_pi).mean()
            loss = loss + actor_loss
            metrics = {M.ACTOR_LOSS: actor_loss.detach(), "awr_weight": weights.mean(), "log_pi_data": log_pi.detach().mean()}
        metrics.update(self.q_metrics(q_data, batch))
        metrics.update(critic_metrics)
        return loss, metrics
