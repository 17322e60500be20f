"""The actor-critic core every agent builds on.

It owns the networks, the target critic, the SAC entropy temperature, one
optimizer over all parameter groups, the target update, acting, and the
checkpoint format. An agent adds its losses in ``compute_losses``.
"""
from __future__ import annotations

import contextlib

import torch
from torch import nn

from o2o import metrics as M
from o2o.agents import torch_internals as internals
from o2o.agents.networks import EnsembleCritic, TanhGaussianActor
from o2o.buffers import Batch
from o2o.config import AlgoConfig, SoftActorConfig


class ActorCritic(nn.Module):
    def __init__(self, obs_dim: int, act_dim: int, cfg: AlgoConfig, device: torch.device, precision: str = "fp32",
                 total_updates: int = 0):
        super().__init__()
        self.cfg, self.obs_dim, self.act_dim = cfg, obs_dim, act_dim  # total_updates: for agents with an LR schedule
        self.device = device
        self.actor = self.make_actor()
        self.critic = self.make_critic()
        self.critic_target = self.make_critic()
        self.critic_target.load_state_dict(self.critic.state_dict())
        self.critic_target.requires_grad_(False)
        if isinstance(cfg, SoftActorConfig):  # the SAC entropy temperature
            self.log_alpha = nn.Parameter(torch.tensor(float(cfg.init_alpha)).log(), requires_grad=cfg.auto_entropy)
            self.target_entropy = -cfg.target_entropy_scale * act_dim
        self.precision = precision
        self.autocast_dtype = torch.bfloat16 if precision == "bf16" else None
        self.to(device)
        self.grad_steps = 0
        self.phase: str | None = None
        self.compiled_update = None  # set by compile_update

    def make_actor(self) -> nn.Module:
        cfg = self.cfg
        return TanhGaussianActor(self.obs_dim, self.act_dim, cfg.actor_hidden, cfg.orthogonal_init,
                                 cfg.trainable_log_std_transform, cfg.log_std_offset, cfg.actor_layer_norm)

    def make_critic(self, act_dim: int | None = None, ensemble_size: int | None = None) -> EnsembleCritic:
        cfg = self.cfg
        return EnsembleCritic(self.obs_dim, self.act_dim if act_dim is None else act_dim, cfg.critic_hidden,
                              ensemble_size or cfg.ensemble_size, cfg.orthogonal_init, cfg.layer_norm)

    def build_optimizer(self, extra_groups: list[dict] | None = None) -> None:
        """One Adam over every parameter group: one step, no per-network loops."""
        groups = [
            {"params": list(self.actor.parameters()), "lr": self.cfg.actor_lr},
            {"params": list(self.critic.parameters()), "lr": self.cfg.critic_lr},
        ]
        if isinstance(self.cfg, SoftActorConfig) and self.cfg.auto_entropy:
            groups.append({"params": [self.log_alpha], "lr": self.cfg.actor_lr})
        groups += extra_groups or []
        fused = self.device.type == "cuda"
        self.optimizer = torch.optim.Adam(groups, fused=fused, foreach=None if fused else True)

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast_dtype)

    @property
    def alpha(self) -> torch.Tensor:
        return self.log_alpha.exp()

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

    def q_metrics(self, q_data: torch.Tensor, batch: Batch) -> dict:
        """Q on dataset actions against the reference return: the calibration diagnostic every agent logs."""
        q_mean = q_data.detach().mean(0)
        return {M.Q_DATA: q_mean.mean(), M.V_REF: batch.v_ref.mean(),
                M.Q_DATA_MINUS_V_REF: (q_mean - batch.v_ref).mean()}

    def actor_and_alpha_losses(self, obs: torch.Tensor, mean: torch.Tensor, log_std: torch.Tensor,
                               eps: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """SAC actor loss alpha * log pi - min_i Q_i, and the entropy-temperature loss."""
        actions, log_pi = TanhGaussianActor.sample(mean, log_std, eps)  # (B, 1, A), (B, 1)
        q_all = self.critic(obs, actions, detach_weights=True)  # (E, B, 1): gradients reach the actions only
        q_pi = q_all.mean(0) if self.cfg.actor_q == "mean" else q_all.amin(0)
        actor_loss = (self.alpha.detach() * log_pi - q_pi).mean()
        loss = actor_loss
        if self.cfg.auto_entropy:
            alpha_loss = -(self.log_alpha * (log_pi.detach() + self.target_entropy)).mean()
            loss = loss + alpha_loss
        return loss, {M.ACTOR_LOSS: actor_loss.detach(), "alpha": self.alpha.detach(),
                      "entropy": -log_pi.detach().mean()}

    def soft_losses(self, batch: Batch, td_target: torch.Tensor, noise: dict, update_actor: bool) -> tuple[torch.Tensor, dict]:
        """SAC's losses for a given TD target: every critic's mean squared TD error (summed over the ensemble), and
        with ``update_actor`` the actor's and the temperature's."""
        with self.autocast():
            q_data = self.critic(batch.obs, batch.actions.unsqueeze(1))[..., 0]  # (E, B)
        td_loss = (q_data - td_target).pow(2).mean(dim=1)
        critic_loss = td_loss.sum()
        loss, metrics = critic_loss, {}
        if update_actor:
            with self.autocast():
                mean, log_std = self.actor(batch.obs)
                actor_loss, metrics = self.actor_and_alpha_losses(batch.obs, mean, log_std, noise["eps_actor"])
            loss = loss + actor_loss
        metrics.update(self.q_metrics(q_data, batch))
        metrics.update({M.CRITIC_LOSS: critic_loss.detach(), "td_loss": td_loss.detach().mean(),
                        "td_target": td_target.mean()})
        return loss, metrics

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        with torch.no_grad():
            internals.foreach_lerp_(list(self.critic_target.parameters()), list(self.critic.parameters()),
                                    self.cfg.tau)
        self.grad_steps += 1
        self.after_step()

    def begin_phase(self, phase: str) -> None:
        """Called when offline pre-training (``metrics.OFFLINE``), online fine-tuning (``metrics.ONLINE``) or offline
        retraining (``metrics.RETRAIN``) starts.

        An agent whose losses differ by phase (Cal-QL's calibration) reads its own config here.
        """
        self.phase = phase

    def compute_losses(self, batch: Batch, noise: dict, update_actor: bool = True) -> tuple[torch.Tensor, dict]:
        """The summed loss of every network this step trains, and metrics as tensors."""
        raise NotImplementedError

    def draw_noise(self, batch_size: int) -> dict:
        """All random numbers of one update, drawn apart so tests can replay them."""
        return {"eps_actor": torch.randn(batch_size, 1, self.act_dim, device=self.device),
                "eps_next": torch.randn(batch_size, 1, self.act_dim, device=self.device)}

    def update(self, batch: Batch) -> dict:
        """One gradient step; returns metrics as tensors (no host sync)."""
        # the last critic step of each block of actor_update_interval (RLPD: the actor after its 20 critic steps)
        update_actor = (self.grad_steps + 1) % self.cfg.actor_update_interval == 0
        noise = {**self.draw_noise(batch.obs.shape[0]), **self.draw_target_subset()}
        first = self.pre_update(batch, noise)  # may add to ``noise`` what it computed for the main step
        if self.compiled_update is not None:
            metrics = self.compiled_update(batch, noise, update_actor)
            self.grad_steps += 1
            self.after_step()
            return {**first, **metrics}
        loss, metrics = self.compute_losses(batch, noise, update_actor)
        self.step(loss)
        return {**first, **metrics}

    def pre_update(self, batch: Batch, noise: dict) -> dict:
        """A step that some agents take on part of their networks before the main one, on the same batch (IQL's
        value function, which its authors update first); it returns its metrics and may put into ``noise`` what the
        main step would compute again. Most agents take none."""
        return {}

    def pre_updated_names(self) -> set[str]:
        """The parameters :meth:`pre_update` trains; the main step leaves them (and their Adam state) alone."""
        return set()

    def forward(self, batch: Batch, noise: dict, update_actor: bool) -> tuple[torch.Tensor, dict]:
        """What ``torch.func.functional_call`` runs for the compiled update: the losses."""
        return self.compute_losses(batch, noise, update_actor)

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
        names = {name for name, _ in self.actor.named_parameters(prefix="actor")}
        return names | ({"log_alpha"} if hasattr(self, "log_alpha") else set())

    def after_step(self) -> None:
        """Per-step bookkeeping outside the gradient step (IQL's learning-rate schedule)."""

    # ------------------------------------------------------------------ acting

    @torch.no_grad()
    def act(self, obs, deterministic: bool) -> "torch.Tensor":
        obs_t = torch.as_tensor(obs, dtype=torch.float32, device=self.device).reshape(1, -1)
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
