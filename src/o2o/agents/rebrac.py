"""ReBRAC (Tarasov et al. 2023, "Revisiting the Minimalist Approach to Offline Reinforcement Learning") and TD3+BC
(Fujimoto & Gu 2021, "A Minimalist Approach to Offline Reinforcement Learning"), its base, as one agent.

TD3's deterministic tanh actor; twin critics trained on r + gamma * (min of the target critics at the target
actor's next action with clipped Gaussian smoothing noise - critic_bc_weight * ||that action - the data's next
action||^2); every ``actor_update_interval`` steps the actor minimises
mean(actor_bc_weight * BC(pi(s), a) - alpha / mean|Q| * Q(s, pi(s))) and only then do both targets move.

ReBRAC as its authors run it: tinkoff-ai/ReBRAC at 694385b (``src/algorithms/rebrac.py``, ``src/networks.py``,
``configs/rebrac/*``), the same losses as CORL's ``algorithms/offline/rebrac.py``; fine-tuning as CORL's
``algorithms/finetune/rebrac.py`` and ``configs/finetune/rebrac/*`` (the critic penalty off online; the actor's
weight times max(``online_actor_bc_floor``, 1 - t / N) at online update t of N: with the floor 0.5 it falls linearly
to half its value by the middle of fine-tuning and stays there). BC is summed over the action
dimensions, Q is the min of the two critics, alpha is 1; LayerNorm after each hidden ReLU of the critics; hidden
layers start at U(+-1/sqrt(fan_in)) with biases 0.1, the output layers at U(+-3e-3) (critic) and U(+-1e-3) (actor).

TD3+BC (``conf/algo/td3bc.yaml``) is this agent with ReBRAC's additions off, exactly the authors' equations
(sfujim/TD3_BC, TD3_BC.py): BC the mean over the action dimensions, Q1 only, alpha 2.5, no critic penalty, no
LayerNorm, PyTorch's default init, observations normalised by the data's mean and std + 1e-3
(tests/test_rebrac_awac_losses.py checks both against their formulas written out).

Differs on purpose (both): the critic and the actor take one summed step, so on an actor step the actor's loss
(and lambda) see the critic as it was before this update's critic step (the authors step the critic first); the
target actor moves toward the actor after its step (ReBRAC's toward the actor before it; TD3+BC's after); the actor
steps on the 2nd, 4th, ... update (ReBRAC: the 1st, 3rd, ...); LayerNorm's epsilon is PyTorch's 1e-5 (Flax's
1e-6). ReBRAC's critic penalty: at the last step of an episode cut by its time limit the data has no next action,
and the step's own stands in (ReBRAC's loader drops those steps); a terminal step bootstraps nothing, so there it
does not matter.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from omegaconf import MISSING
from torch import nn

from o2o import metrics as M
from o2o.agents.core import ActorCritic
from o2o.agents.networks import EnsembleCritic
from o2o.agents.registry import register
from o2o.buffers import Batch
from o2o.config import AlgoConfig, require
from o2o.metrics import ONLINE


@dataclass
class ReBRACConfig(AlgoConfig):
    actor_bc_weight: float = MISSING  # beta_actor (ReBRAC's actor_bc_coef; TD3+BC: 1)
    critic_bc_weight: float = MISSING  # beta_critic, offline (ReBRAC's critic_bc_coef; TD3+BC: 0); 0 online
    alpha: float = MISSING  # the Q term's weight is alpha / mean|Q| (TD3+BC: 2.5; ReBRAC: 1)
    actor_q: str = MISSING  # the Q the actor maximises: min (of the critics; ReBRAC) | first (Q1; TD3+BC)
    bc_reduction: str = MISSING  # over the action dimensions: sum (ReBRAC) | mean (TD3+BC's mse_loss)
    actor_layer_norm: bool = MISSING  # LayerNorm after each hidden ReLU of the actor (ReBRAC's actor_ln)
    init: str = MISSING  # rebrac (see the module) | pytorch (nn.Linear's default: weights and biases U(+-1/sqrt(fan_in)))
    policy_noise: float = MISSING  # target policy smoothing: std of the noise on the target actor's action
    noise_clip: float = MISSING  # ... clipped to +-noise_clip
    exploration_noise: float = MISSING  # std of the Gaussian noise on the actor's action when it acts online
    normalize_observations: bool = MISSING  # (s - mean) / (std + 1e-3) of the offline data
    online_actor_bc_floor: float = MISSING  # online, actor_bc_weight x max(floor, 1 - t / N) at online update t of N

    def check(self) -> None:
        super().check()
        for key in ("actor_bc_weight", "critic_bc_weight", "alpha", "policy_noise", "noise_clip", "exploration_noise"):
            require(getattr(self, key) >= 0, f"algo.{key} must be >= 0, got {getattr(self, key)}")
        require(self.actor_q in ("min", "first"), f"algo.actor_q must be min or first, got {self.actor_q!r}")
        require(self.bc_reduction in ("sum", "mean"), f"algo.bc_reduction must be sum or mean, got {self.bc_reduction!r}")
        require(self.init in ("rebrac", "pytorch"), f"algo.init must be rebrac or pytorch, got {self.init!r}")
        require(0 <= self.online_actor_bc_floor <= 1,
                f"algo.online_actor_bc_floor must be in [0, 1], got {self.online_actor_bc_floor}")
        require(not self.orthogonal_init, "algo.orthogonal_init: ReBRAC and TD3+BC set their init by algo.init")
        require(not self.normalize_observations or self.pretrain,
                "algo.normalize_observations needs the offline data's statistics, read when pre-training: set "
                "algo.pretrain=true or algo.normalize_observations=false")

    @property
    def reads_next_actions(self) -> bool:
        return self.critic_bc_weight > 0


def _uniform_(tensor: torch.Tensor, bound: float) -> None:
    with torch.no_grad():
        tensor.uniform_(-bound, bound)


class DeterministicActor(nn.Module):
    """a = tanh(MLP(normalised obs)), ReLU then (with ``layer_norm``) LayerNorm in each hidden layer; the actor
    interface of o2o.agents.core, with Gaussian exploration noise of std ``exploration_noise`` when stochastic."""

    def __init__(self, normalizer: nn.Module, obs_dim: int, act_dim: int, hidden: list[int], layer_norm: bool,
                 exploration_noise: float, init: str):
        super().__init__()
        self.normalizer = normalizer
        layers, width = [], obs_dim
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(), *([nn.LayerNorm(h)] if layer_norm else [])]
            width = h
        self.trunk = nn.Sequential(*layers)
        self.head = nn.Linear(width, act_dim)
        self.exploration_noise = exploration_noise
        linears = [m for m in self.trunk if isinstance(m, nn.Linear)]
        if init == "rebrac":  # networks.py: pytorch_init kernels, bias 0.1; the output uniform_init(1e-3)
            for layer in linears:
                _uniform_(layer.weight, 1.0 / math.sqrt(layer.in_features))
                nn.init.constant_(layer.bias, 0.1)
            _uniform_(self.head.weight, 1e-3)
            _uniform_(self.head.bias, 1e-3)
        # init == "pytorch": nn.Linear's own

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.trunk(self.normalizer(obs))))

    def act(self, obs: torch.Tensor, deterministic: bool, eps: torch.Tensor | None) -> torch.Tensor:
        action = self(obs)
        return action if deterministic else (action + self.exploration_noise * eps[:, 0]).clamp(-1.0, 1.0)


class NormalizedCritic(nn.Module):
    """The core's critic ensemble on normalised observations."""

    def __init__(self, normalizer: nn.Module, critic: EnsembleCritic):
        super().__init__()
        self.normalizer, self.ensemble = normalizer, critic

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, detach_weights: bool = False) -> torch.Tensor:
        return self.ensemble(self.normalizer(obs), actions, detach_weights)


@register("rebrac", ReBRACConfig)
class ReBRAC(ActorCritic):
    def __init__(self, obs_dim: int, act_dim: int, cfg: ReBRACConfig, device, precision: str = "fp32",
                 total_updates: int = 0, obs_stats=None):
        super().__init__(obs_dim, act_dim, cfg, device, precision, total_updates, obs_stats)
        self.actor_target = copy.deepcopy(self.actor).requires_grad_(False)
        self.total_updates = total_updates
        self.online_start: int | None = None  # the update at which fine-tuning began (the decay's origin)
        self.build_optimizer()

    def _normalizer(self) -> nn.Module:
        return self.observation_normalizer(eps=1e-3) if self.cfg.normalize_observations else nn.Identity()

    def make_actor(self) -> nn.Module:
        cfg = self.cfg
        return DeterministicActor(self._normalizer(), self.obs_dim, self.act_dim, cfg.actor_hidden,
                                  cfg.actor_layer_norm, cfg.exploration_noise, cfg.init)

    def make_critic(self, act_dim: int | None = None, ensemble_size: int | None = None) -> nn.Module:
        cfg = self.cfg
        critic = EnsembleCritic(self.obs_dim, self.act_dim if act_dim is None else act_dim, cfg.critic_hidden,
                                ensemble_size or cfg.ensemble_size, False, cfg.layer_norm, norm_after_activation=True)
        last = len(critic.weights) - 1
        for i, (weight, bias) in enumerate(zip(critic.weights, critic.biases)):
            fan_in = weight.shape[1]
            if cfg.init == "pytorch":  # nn.Linear's: the bias too
                _uniform_(bias, 1.0 / math.sqrt(fan_in))
            elif i == last:  # ReBRAC's critic output: uniform_init(3e-3), kernel and bias
                _uniform_(weight, 3e-3)
                _uniform_(bias, 3e-3)
            else:
                nn.init.constant_(bias, 0.1)
        return NormalizedCritic(self._normalizer(), critic)

    # ------------------------------------------------------------------ phases and the online decay

    def begin_phase(self, phase: str) -> None:
        super().begin_phase(phase)
        if phase == ONLINE and self.online_start is None:
            self.online_start = self.grad_steps

    def bc_weights(self) -> tuple[float, float]:
        """(actor, critic) penalty weights at this update: offline as configured; online the critic's off and the
        actor's falling linearly from its value to ``online_actor_bc_floor`` of it over the online updates (CORL
        finetune/rebrac.py: decay = max(min_decay_coef, (N_online - t) / N_online))."""
        cfg = self.cfg
        if self.phase != ONLINE:
            return cfg.actor_bc_weight, cfg.critic_bc_weight
        horizon = max(self.total_updates - self.online_start, 1)
        decay = max(cfg.online_actor_bc_floor, 1.0 - (self.grad_steps - self.online_start) / horizon)
        return cfg.actor_bc_weight * decay, 0.0

    def draw_noise(self, batch_size: int) -> dict:
        actor_bc, critic_bc = self.bc_weights()  # as inputs, so that the compiled graph does not bake them in
        return {"target_noise": torch.randn(batch_size, 1, self.act_dim, device=self.device),  # (a fill, no host copy)
                "actor_bc_weight": torch.full((), actor_bc, device=self.device),
                "critic_bc_weight": torch.full((), critic_bc, device=self.device)}

    def checkpoint(self) -> dict:
        return {**super().checkpoint(), "online_start": self.online_start}

    def restore(self, state: dict) -> None:
        super().restore(state)
        self.online_start = state.get("online_start")

    # ------------------------------------------------------------------ losses

    def bc(self, actions: torch.Tensor, data_actions: torch.Tensor) -> torch.Tensor:
        """Squared distance per sample, summed or averaged over the action dimensions."""
        squared = (actions - data_actions).pow(2)
        return squared.sum(-1) if self.cfg.bc_reduction == "sum" else squared.mean(-1)

    def compute_losses(self, batch: Batch, noise: dict, update_actor: bool = True) -> tuple[torch.Tensor, dict]:
        cfg = self.cfg
        with torch.no_grad(), self.autocast():
            smoothing = (noise["target_noise"] * cfg.policy_noise).clamp(-cfg.noise_clip, cfg.noise_clip)
            next_actions = (self.actor_target(batch.next_obs).float().unsqueeze(1) + smoothing).clamp(-1.0, 1.0)
            q_next = self.target_min(self.critic_target(batch.next_obs, next_actions), noise)[:, 0]
            if cfg.reads_next_actions:  # ReBRAC's critic penalty on the data's next action
                q_next = q_next - noise["critic_bc_weight"] * (next_actions[:, 0] - batch.next_actions).pow(2).sum(-1)
            td_target = batch.rewards + cfg.gamma * (1.0 - batch.dones) * q_next
        loss, q_data, metrics = self.td_losses(batch, td_target)
        if update_actor:
            with self.autocast():
                pi = self.actor(batch.obs).float()
                q_pi = self.critic(batch.obs, pi.unsqueeze(1), detach_weights=True)[..., 0]  # (E, B)
            q = q_pi[0] if cfg.actor_q == "first" else q_pi.amin(0)
            lmbda = cfg.alpha / q.abs().mean().detach()
            bc = self.bc(pi, batch.actions)
            actor_loss = (noise["actor_bc_weight"] * bc - lmbda * q).mean()
            loss = loss + actor_loss
            metrics.update({M.ACTOR_LOSS: actor_loss.detach(), "bc_loss": bc.detach().mean(), "lambda": lmbda,
                            M.Q_POLICY: q.detach().mean(), "actor_bc_weight": noise["actor_bc_weight"]})
        metrics.update(self.q_metrics(q_data, batch))
        return loss, metrics

    def update_targets(self, update_actor: bool) -> None:
        """TD3: both targets move on the delayed actor steps only."""
        if update_actor:
            super().update_targets(update_actor)
            self.polyak_(self.actor_target, self.actor)
