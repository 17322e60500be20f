"""AWAC (Nair et al. 2020, "Accelerating Online Reinforcement Learning with Offline Datasets", arXiv 2006.09359) as
its authors run it: rail-berkeley/rlkit (``rlkit/torch/sac/awac_trainer.py``, ``examples/awac/hand/awac1.py``,
``examples/awac/mujoco/awac1.py``, ``rlkit/torch/sac/policies/gaussian_policy.py``, ``rlkit/torch/networks/mlp.py``).

The policy is rlkit's ``GaussianPolicy`` with ``std_architecture="values"``: a Gaussian (not squashed) whose mean
is tanh of the network's output and whose log-std is one learned vector, -6 + 6 * sigmoid(logits) (starting at -3).
Twin critics regress r + gamma * (1 - done) * min Q_target(s', a' ~ pi(.|s')), no entropy term (the scripts' alpha
0). The actor maximises the advantage-weighted log-likelihood of the data's actions: A = min Q(s, a) - V(s), with
V(s) = min Q(s, mean of pi) (``awr_use_mle_for_vf``; the hand scripts) or at one sampled action (the MuJoCo
scripts), A clipped above at ``advantage_clip`` (``clip_score``; hand 0.5), weights softmax(A / beta) over
the batch (``normalize_over_batch``), loss -sum_i w_i log pi(a_i | s_i); plus an L2 penalty of
``actor_weight_decay`` (``policy_weight_decay``, written as 0.5 * wd * |theta|^2 in the loss: Adam's coupled weight
decay, exactly, and compilable). With ``critic_output_max`` every Q is clamped above (the hand scripts' Q output
``Clamp(max=0)``: rewards there are <= 0), inside the critic, so the calibration diagnostics read the clamped Q too.
Networks start as rlkit's: hidden weights U(+-1/sqrt(size[0])) of the (out, in) weight (``fanin_init``: the output
width), zero biases, output weights U(+-init_w) (policy 1e-3, critics 3e-3) and zero output biases.

Cross-checks, where they differ from the authors: CORL's ``algorithms/finetune/awac.py`` weights exp(A / lambda)
capped at 100 without the batch softmax or the advantage clip (lambda 0.1 on AntMaze and Adroit), a linear mean and
a log-std in [-20, 2], 3x256 networks, batch 256, no weight decay; d3rlpy's ``AWAC`` takes the batch softmax but
no clip, and its critic target (SAC's, inherited) samples a tanh-squashed action and subtracts log pi with a
temperature of 1.

Differs on purpose: acting clips the Gaussian's sample to [-1, 1] (the env's bounds; rlkit passes it to the env
unclipped); the critic and the actor take one summed step on one batch (rlkit: one batch, separate optimizer steps,
critic first), so the weights use the critic before this update's step, as rlkit's do. On frames (the authors ran
AWAC on states only) the weight decay covers the actor's own encoder too, as ``policy_weight_decay`` covers every
parameter of rlkit's policy.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

import torch
from omegaconf import MISSING
from torch import nn

from o2o import metrics as M
from o2o.agents.core import ActorCritic
from o2o.agents.networks import mlp
from o2o.agents.registry import register
from o2o.buffers import Batch
from o2o.config import AlgoConfig, require

LOG_STD_RANGE = (-6.0, 0.0)  # awac1.py policy_kwargs min_log_std, max_log_std


@dataclass
class AWACConfig(AlgoConfig):
    beta: float = MISSING  # rlkit's beta: weights softmax(A / beta) over the batch
    advantage_clip: Optional[float] = None  # clip_score: A clipped above at this value; None: no clip
    value_from: str = MISSING  # V(s) as min Q at the policy's mean (mean; awr_use_mle_for_vf) or at one sample (sample)
    actor_weight_decay: float = MISSING  # policy_weight_decay
    critic_output_max: Optional[float] = None  # Q clamped above at this value; None: no clamp

    def check(self) -> None:
        super().check()
        require(self.beta > 0, f"algo.beta must be > 0, got {self.beta}")
        require(self.value_from in ("mean", "sample"), f"algo.value_from must be mean or sample, got {self.value_from!r}")
        require(self.actor_weight_decay >= 0, f"algo.actor_weight_decay must be >= 0, got {self.actor_weight_decay}")
        require(not self.orthogonal_init, "algo.orthogonal_init: AWAC's networks start as rlkit's")


def _fanin_uniform_(weight: torch.Tensor, bound_from: int) -> None:
    """rlkit's ``fanin_init``: U(+-1/sqrt(n)) with n the first dimension of PyTorch's (out, in) weight."""
    bound = 1.0 / math.sqrt(bound_from)
    with torch.no_grad():
        weight.uniform_(-bound, bound)


class ClampedCritic(nn.Module):
    """The critic ensemble with its output clamped above (rlkit's ``output_activation=Clamp(max=...)``)."""

    def __init__(self, ensemble: nn.Module, q_max: float):
        super().__init__()
        self.ensemble, self.q_max = ensemble, q_max

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, detach_weights: bool = False) -> torch.Tensor:
        return self.ensemble(obs, actions, detach_weights).clamp(max=self.q_max)


class AWACPolicy(nn.Module):
    """rlkit's ``GaussianPolicy(std_architecture="values")``: N(tanh(MLP(s)), exp(log_std)), log_std one vector in
    [-6, 0] through a sigmoid."""

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int]):
        super().__init__()
        self.trunk, width = mlp(obs_dim, hidden)
        for layer in self.trunk:
            if isinstance(layer, nn.Linear):  # rlkit's fanin_init, zero bias
                _fanin_uniform_(layer.weight, layer.out_features)
                nn.init.zeros_(layer.bias)
        self.head = nn.Linear(width, act_dim)
        nn.init.uniform_(self.head.weight, -1e-3, 1e-3)
        nn.init.zeros_(self.head.bias)
        self.log_std_logits = nn.Parameter(torch.zeros(act_dim))

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low, high = LOG_STD_RANGE
        mean = torch.tanh(self.head(self.trunk(obs))).float()
        log_std = (low + torch.sigmoid(self.log_std_logits) * (high - low)).expand_as(mean)
        return mean, log_std

    @staticmethod
    def log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        z = (actions - mean) / log_std.exp()
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def act(self, obs: torch.Tensor, deterministic: bool, eps: torch.Tensor | None) -> torch.Tensor:
        mean, log_std = self(obs)
        return mean if deterministic else (mean + log_std.exp() * eps[:, 0]).clamp(-1.0, 1.0)


@register("awac", AWACConfig)
class AWAC(ActorCritic):
    def __init__(self, obs_dim: int, act_dim: int, cfg: AWACConfig, device, precision: str = "fp32",
                 total_updates: int = 0, obs_stats=None):
        super().__init__(obs_dim, act_dim, cfg, device, precision, total_updates, obs_stats)
        self.build_optimizer()

    def make_actor(self) -> nn.Module:
        return AWACPolicy(self.obs_dim, self.act_dim, self.cfg.actor_hidden)

    def make_critic(self, act_dim: int | None = None, ensemble_size: int | None = None) -> nn.Module:
        critic = super().make_critic(act_dim, ensemble_size)  # zero biases
        with torch.no_grad():
            for weight in critic.weights[:-1]:  # (E, in, out): rlkit's fan-in is the output width
                for member in weight:
                    _fanin_uniform_(member, weight.shape[2])
            critic.weights[-1].uniform_(-3e-3, 3e-3)  # ConcatMlp's output layer: init_w 3e-3, bias 0
        limit = self.cfg.critic_output_max
        return critic if limit is None else ClampedCritic(critic, limit)

    def draw_noise(self, batch_size: int) -> dict:
        return {"eps_next": torch.randn(batch_size, 1, self.act_dim, device=self.device),
                "eps_value": torch.randn(batch_size, 1, self.act_dim, device=self.device)}

    def compute_losses(self, batch: Batch, noise: dict, update_actor: bool = True) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        with torch.no_grad(), self.autocast():
            next_mean, next_log_std = self.actor(batch.next_obs)
            next_actions = next_mean.unsqueeze(1) + next_log_std.exp().unsqueeze(1) * noise["eps_next"]  # unclipped
            q_next = self.target_min(self.critic_target(batch.next_obs, next_actions), noise)[:, 0]
            td_target = batch.rewards + cfg.gamma * (1.0 - batch.dones) * q_next
        loss, q_data, metrics = self.td_losses(batch, td_target)
        if update_actor:
            with self.autocast():
                mean, log_std = self.actor(batch.obs)
            with torch.no_grad(), self.autocast():
                value_action = mean.detach()
                if cfg.value_from == "sample":
                    value_action = value_action + log_std.detach().exp() * noise["eps_value"][:, 0]
                v = self.critic(batch.obs, value_action.unsqueeze(1))[..., 0].amin(0)
                advantage = q_data.detach().amin(0) - v
                if cfg.advantage_clip is not None:
                    advantage = advantage.clamp(max=cfg.advantage_clip)
                weights = torch.softmax(advantage / cfg.beta, dim=0)
            log_pi = AWACPolicy.log_prob(mean, log_std, batch.actions)
            actor_loss = -(weights * log_pi).sum()
            decay = sum(p.pow(2).sum() for p in self.actor.parameters())
            loss = loss + actor_loss + 0.5 * cfg.actor_weight_decay * decay
            metrics.update({M.ACTOR_LOSS: actor_loss.detach(), "advantage": advantage.mean(),
                            "awr_weight_max": weights.max() * weights.shape[0], "log_pi_data": log_pi.detach().mean(),
                            M.Q_POLICY: v.mean()})
        metrics.update(self.q_metrics(q_data, batch))
        return loss, metrics
