"""The actor-critic core every agent builds on.

It owns what every agent shares: the actor, the critic ensemble and its target, one optimizer over all parameter
groups, the target update (:meth:`ActorCritic.update_targets`, the one hook both the eager and the compiled step
call), the gradient step, acting, and the checkpoint format. An agent adds its actor (:meth:`make_actor`) and its
losses (:meth:`compute_losses`); what is SAC's (the entropy temperature, the squashed Gaussian actor) is in
``o2o.agents.soft``.

**The actor interface.** ``agent.actor`` is an ``nn.Module`` with
``act(obs, deterministic, eps) -> actions``: ``obs`` a float tensor (B, obs_dim), ``deterministic`` a bool (the
evaluation action when true), ``eps`` standard normal noise (B, 1, act_dim) for a stochastic action, or None
(only with ``deterministic``); it returns actions (B, act_dim) in [-1, 1]. Evaluation, the calibration probe,
the exploration bonuses and the exported MLflow policy call only this.

**Constructor.** ``Agent(obs_dim, act_dim, cfg, device, precision="fp32", total_updates=0, obs_stats=None)``:
``obs_dim`` the flat observation's size, or for image observations a
:class:`~o2o.agents.encoders.PixelObservation` (the frames' shape and the encoder): the core then puts an encoder
of its own in front of the actor, the critic and its target (and of any network the agent passes through
:meth:`encoded`), builds them on the encoder's features (``self.obs_dim`` is their width), and augments training
batches as the encoder's config says; the agent's losses are the same. ``cfg`` the validated ``algo`` config (the agent's registered schema), ``total_updates`` the gradient steps the
run plans (for a learning-rate schedule), ``obs_stats`` the offline dataset's observation statistics
(:class:`ObservationStats`; None when the run reads no offline data). An agent that normalises observations
builds its networks behind :meth:`observation_normalizer`, so that the statistics are saved in its state dict
(the checkpoint) and travel inside ``agent.actor`` into the exported policy, which then acts on raw
observations.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from o2o import metrics as M
from o2o.agents import torch_internals as internals
from o2o.agents.encoders import Encoded, PixelObservation, augment, make_encoder
from o2o.agents.modes import ACTOR_ONLY, AFTER_CRITIC
from o2o.agents.networks import EnsembleCritic, ObservationNormalizer
from o2o.buffers import Batch
from o2o.config import AlgoConfig


@dataclass(frozen=True)
class ObservationStats:
    """Per-dimension mean and standard deviation of the offline dataset's observations."""

    mean: np.ndarray
    std: np.ndarray

    @classmethod
    def of(cls, observations: np.ndarray) -> "ObservationStats":
        return cls(observations.mean(0).astype(np.float32), observations.std(0).astype(np.float32))


class ActorCritic(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, cfg: AlgoConfig, device: torch.device, precision: str = "fp32",
                 total_updates: int = 0, obs_stats: ObservationStats | None = None):
        super().__init__()
        self.pixels = obs_dim if isinstance(obs_dim, PixelObservation) else None
        if self.pixels is not None:
            obs_dim, obs_stats = self.pixels.features, None  # the networks see the encoder's features
        self.cfg, self.obs_dim, self.act_dim = cfg, obs_dim, act_dim  # total_updates: for agents with an LR schedule
        self.device, self.obs_stats = device, obs_stats
        self.actor = self.encoded(self.make_actor())
        self.critic = self.encoded(self.make_critic())
        self.critic_target = self.encoded(self.make_critic())
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        self.precision = precision
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.to(device)
        self.grad_steps = 0
        self.phase: str | None = None
        self.actor_interval = cfg.actor_update_interval  # actor and temperature step every N critic steps (per phase)
        self.actor_after_critic = False  # the actor steps on the stepped critic (AFTER_CRITIC): set by agents
        # whose authors' code does (SoftActorCritic from its config, CQL per phase)
        self.compiled_update = None  # set by compile_update

    @property
    def observation(self) -> "int | PixelObservation":
        """What the agent was built for: the flat observation's size, or the image frames and their encoder."""
        return self.pixels if self.pixels is not None else self.obs_dim

    @property
    def flat_obs_dim(self) -> int:
        """The size of one observation as the buffers keep it (an image's H * W * C)."""
        return self.pixels.flat_dim if self.pixels is not None else self.obs_dim

    def make_actor(self) -> nn.Module:
        """The policy: an ``nn.Module`` with the actor interface (module docstring)."""
        raise NotImplementedError

    def encoded(self, net: nn.Module) -> nn.Module:
        """``net`` behind an image encoder of its own where observations are images (o2o.agents.encoders); ``net``
        itself otherwise."""
        if self.pixels is None:
            return net
        return Encoded(make_encoder(self.pixels), net)

    def observation_normalizer(self, eps: float = 0.0) -> ObservationNormalizer:
        """(obs - mean) / (std + eps) with the dataset's statistics (the identity until a checkpoint fills it, when
        the agent is built without them), for agents that normalise observations."""
        return ObservationNormalizer(self.obs_dim, self.obs_stats, eps)

    def make_critic(self, act_dim: int | None = None, ensemble_size: int | None = None) -> EnsembleCritic:
        cfg = self.cfg
        return EnsembleCritic(self.obs_dim, self.act_dim if act_dim is None else act_dim, cfg.critic_hidden,
                              ensemble_size or cfg.ensemble_size, cfg.orthogonal_init, cfg.layer_norm)

    def build_optimizer(self, extra_groups: list[dict] | None = None) -> None:
        """One Adam over every parameter group: one step, no per-network loops (Adam skips a frozen parameter)."""
        groups = [
            {"params": list(self.actor.parameters()), "lr": self.cfg.actor_lr},
            {"params": list(self.critic.parameters()), "lr": self.cfg.critic_lr},
        ]
        groups += extra_groups or []
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.Adam(groups, fused=fused, foreach=None if fused else True)

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    # ------------------------------------------------------------------ pieces the losses share

    def draw_target_subset(self) -> dict:
        """RLPD's ``target_subset``: which ensemble members the TD target's min runs over this update."""
        if self.cfg.target_subset is None or self.cfg.target_subset >= self.cfg.ensemble_size:
            return {}
        return {"target_subset": torch.randperm(self.cfg.ensemble_size, device=self.device)[: self.cfg.target_subset]}

    def target_min(self, q: torch.Tensor, noise: dict) -> torch.Tensor:
        """Min over the ensemble axis, or over the subset ``draw_target_subset`` drew."""
        if "target_subset" in noise:
            q = q[noise["target_subset"]]
        return q.amin(0)

    def td_losses(self, batch: Batch, td_target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, dict]:
        """Every critic's mean squared TD error against ``td_target`` on the batch's actions, summed over the
        ensemble: the loss, Q(s, a_data) (E, B), and the critic step's metrics."""
        with self.autocast():
            q_data = self.critic(batch.obs, batch.actions.unsqueeze(1))[..., 0]  # (E, B)
        td_loss = (q_data - td_target).pow(2).mean(dim=1)
        loss = td_loss.sum()
        return loss, q_data, {M.CRITIC_LOSS: loss.detach(), M.TD_LOSS: td_loss.detach().mean(),
                              M.TD_TARGET: td_target.mean()}

    def q_metrics(self, q_data: torch.Tensor, batch: Batch) -> dict:
        """Q on dataset actions against the reference return: the calibration diagnostic every agent logs. The V_ref
        means are over the rows whose V_ref is known (the step schedule's running episode has none yet: NaN; a batch
        of only such rows gives NaN, which is not logged)."""
        q_mean = q_data.detach().mean(0)
        known = torch.isfinite(batch.v_ref)
        count = known.sum()
        return {M.Q_DATA: q_mean.mean(), M.V_REF: torch.where(known, batch.v_ref, 0.0).sum() / count,
                M.Q_DATA_MINUS_V_REF: torch.where(known, q_mean - batch.v_ref, 0.0).sum() / count}

    def step(self, loss: torch.Tensor, update_actor: bool = True) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            self.update_targets(update_actor)
        self.grad_steps += 1
        self.after_step()

    def update_targets(self, update_actor: bool) -> None:
        """Move the target networks after a step (run under no_grad, by the eager step and inside the compiled
        graph alike): the Polyak average of the critic with rate ``tau``. An agent whose targets move otherwise
        (TD3's, only on the delayed actor steps, the actor's target too) overrides it; ``update_actor`` says
        whether this step was one."""
        self.polyak_(self.critic_target, self.critic)

    def polyak_(self, target: nn.Module, source: nn.Module) -> None:
        """target <- target + tau * (source - target), every parameter at once (foreach)."""
        internals.foreach_lerp_(list(target.parameters()), list(source.parameters()), self.cfg.tau)

    def begin_phase(self, phase: str) -> None:
        """Called when offline pre-training (``metrics.OFFLINE``), online fine-tuning (``metrics.ONLINE``) or offline
        retraining (``metrics.RETRAIN``) starts.

        An agent whose losses differ by phase (Cal-QL's calibration) reads its own config here.
        """
        self.phase = phase
        self.actor_interval = self.cfg.actor_update_interval

    def compute_losses(self, batch: Batch, noise: dict, update_actor: bool = True) -> tuple[torch.Tensor, dict]:
        """The summed loss of every network this step trains, and metrics as tensors."""
        raise NotImplementedError

    def draw_noise(self, batch_size: int) -> dict:
        """All random numbers of one update, drawn apart so tests can replay them (and the compiled update sees
        the eager one's)."""
        return {}

    def update(self, batch: Batch) -> dict:
        """One gradient step; returns metrics as tensors (no host sync)."""
        # the last critic step of each block of actor_update_interval (RLPD: the actor after its 20 critic steps)
        update_actor = (self.grad_steps + 1) % self.actor_interval == 0
        if self.pixels is not None:
            batch = augment(batch, self.pixels)
        noise = {**self.draw_noise(batch.obs.shape[0]), **self.draw_target_subset()}
        first = self.pre_update(batch, noise)  # may add to ``noise`` what it computed for the main step
        mode = AFTER_CRITIC if update_actor and self.actor_after_critic else update_actor
        if self.compiled_update is not None:
            metrics = self.compiled_update(batch, noise, mode)
            self.grad_steps += 1
            self.after_step()
            return {**first, **metrics}
        loss, metrics = self.compute_losses(batch, noise, mode is True)
        self.step(loss, mode is True)
        if mode == AFTER_CRITIC:  # the actor's own step, on the critic as the step above left it
            actor_loss, actor_metrics = self.actor_losses(batch, noise)
            self.optimizer.zero_grad(set_to_none=True)
            actor_loss.backward()  # the critic's weights are detached in the actor's loss: Adam skips them
            self.optimizer.step()
            metrics.update(actor_metrics)
        return {**first, **metrics}

    def actor_losses(self, batch: Batch, noise: dict) -> tuple[torch.Tensor, dict]:
        """The actor's (and its temperature's) losses alone, for its step after the critic's
        (``actor_after_critic``); their gradients reach no critic weight."""
        raise NotImplementedError(f"{type(self).__name__} steps its actor with its critic only")

    def pre_update(self, batch: Batch, noise: dict) -> dict:
        """A step that some agents take on part of their networks before the main one, on the same batch (IQL's
        value function, which its authors update first); it returns its metrics and may put into ``noise`` what the
        main step would compute again. Most agents take none."""
        return {}

    def pre_updated_names(self) -> set[str]:
        """The parameters :meth:`pre_update` trains; the main step leaves them (and their Adam state) alone."""
        return set()

    def forward(self, batch: Batch, noise: dict, mode) -> tuple[torch.Tensor, dict]:
        """What ``torch.func.functional_call`` runs for the compiled update: the losses of ``mode`` (True / False:
        with or without the actor's; :data:`ACTOR_ONLY`: the actor's alone)."""
        if mode == ACTOR_ONLY:
            return self.actor_losses(batch, noise)
        return self.compute_losses(batch, noise, mode)

    def compile_update(self, cuda_graphs: bool | None = None, backend: str = "inductor") -> None:
        """``compile=true``: every later ``update`` runs as one compiled graph (o2o.agents.compiled); CUDA graphs
        by default on a GPU. ``backend``: torch.compile's (tests use ``aot_eager``, which compiles in seconds)."""
        from o2o.agents.compiled import CompiledUpdate
        cuda_graphs = self.device.type == "cuda" if cuda_graphs is None else cuda_graphs
        self.compiled_update = CompiledUpdate(self, cuda_graphs, backend)

    def idle_names(self) -> set[str]:
        """Parameters the present phase's losses do not use: they get no gradient, so eager Adam leaves them and their
        state alone, and the compiled update must too."""
        return set()

    def actor_side_names(self) -> set[str]:
        """Parameters that get no gradient when the actor is not updated this step (their Adam state stays put)."""
        return {name for name, _ in self.actor.named_parameters(prefix="actor")}

    def after_step(self) -> None:
        """Per-step bookkeeping outside the gradient step (IQL's learning-rate schedule)."""

    # ------------------------------------------------------------------ acting

    @torch.no_grad()
    def act(self, obs, deterministic: bool) -> "torch.Tensor":
        dtype = torch.uint8 if self.pixels is not None else torch.float32
        obs_t = torch.as_tensor(np.asarray(obs), dtype=dtype, device=self.device).reshape(1, -1)
        with self.autocast():
            action = self.actor.act(obs_t, deterministic, torch.randn(1, 1, self.act_dim, device=self.device))
        return action.reshape(-1).float().cpu().numpy()

    # ------------------------------------------------------------------ checkpoint

    def checkpoint(self) -> dict:
        return {"model": self.state_dict(), "optimizer": self.optimizer.state_dict(), "grad_steps": self.grad_steps}

    def restore(self, state: dict) -> None:
        self.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.grad_steps = int(state["grad_steps"])
