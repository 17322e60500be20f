"""Learned reference values: V_ref(s) from a value function fitted on the offline data instead of exact returns.

The Cal-QL paper (Sec. 7, "Cal-QL performance largely remains unaltered when reference value functions must be
estimated") bounds the policy's Q-values with V_ref, by default the Monte-Carlo return-to-go of the data
(``reference=mc``, o2o.returns). With ``reference=regression`` or ``reference=td`` a value network is fitted on
the offline data before pre-training and V_ref(s) becomes its prediction, for the offline data and for every
online episode:

- ``regression``: least squares on the Monte-Carlo returns-to-go, V(s) ~ G(s);
- ``td``: TD(0) on the behaviour policy, V(s) ~ r + gamma (1 - done) V_target(s'), a target network updated by
  Polyak averaging (no Monte-Carlo returns needed: the setting where they are unavailable);
- ``quantile``: not a value function but one threshold for all states, rlox's simplification
  (:class:`QuantileReference`, conf/reference/quantile.yaml).

Network, optimiser and batch follow the IQL authors' value network (ikostrikov/implicit_q_learning: 2x256 ReLU,
Adam 3e-4, batch 256, target rate 0.005). The fit is seeded from the run's seed in its own random streams, so a
resumed run fits the same function again instead of storing it. Its error against the Monte-Carlo returns goes
to MLflow as ``offline/reference/*`` after the fit and ``online/reference/*`` for each online episode
(``o2o.metrics.REFERENCE_KEYS``).
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from o2o import metrics as M
from o2o.agents.networks import mlp


class ValueNetwork(nn.Module):
    def __init__(self, obs_dim: int, hidden: list[int]):
        super().__init__()
        body, width = mlp(obs_dim, hidden)
        self.net = nn.Sequential(*body, nn.Linear(width, 1))

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return self.net(obs).squeeze(-1)


class LearnedReference:
    """A value network fitted on offline transitions; ``__call__`` gives V_ref for a block of observations."""

    def __init__(self, obs_dim: int, cfg, gamma: float, seed: int, device: torch.device):
        self.cfg, self.gamma, self.device = cfg, gamma, device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = ValueNetwork(obs_dim, list(cfg.hidden)).to(device)
            self.target = ValueNetwork(obs_dim, list(cfg.hidden)).to(device)
        self.target.load_state_dict(self.net.state_dict())
        self.generator = torch.Generator(device=device).manual_seed(seed)

    def fit(self, obs, rewards, next_obs, dones, mc_returns, log=None) -> dict[str, float]:
        """Fit on the offline data (tensors on the device, rewards already transformed); returns the error of the
        fitted V against ``mc_returns``. ``log(metrics, step)`` receives the loss as it goes."""
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.cfg.lr)
        n, td = len(obs), self.cfg.value == "td"
        every = max(self.cfg.fit_steps // 20, 1)
        for step in range(1, self.cfg.fit_steps + 1):
            idx = torch.randint(0, n, (min(self.cfg.batch_size, n),), generator=self.generator, device=self.device)
            if td:
                with torch.no_grad():
                    target = rewards[idx] + self.gamma * (1.0 - dones[idx]) * self.target(next_obs[idx])
            else:
                target = mc_returns[idx]
            loss = (self.net(obs[idx]) - target).pow(2).mean()
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if td:
                with torch.no_grad():
                    for p, p_target in zip(self.net.parameters(), self.target.parameters()):
                        p_target.lerp_(p, self.cfg.target_rate)
            if log is not None and (step % every == 0 or step == self.cfg.fit_steps):
                log({M.reference(M.OFFLINE, M.FIT_LOSS): loss.item()}, step)
        return reference_error(self(obs), mc_returns)

    def attach(self, buffer) -> None:
        """A learned V_ref is per state and written with its episode: nothing to keep up to date."""

    def episode_values(self, mc_returns: torch.Tensor, observations) -> torch.Tensor:
        """V_ref of a finished episode's states."""
        return self(observations)

    def state(self) -> None:
        return None  # fitted again, deterministically, on resume

    def load_state(self, state) -> None:
        pass

    @torch.no_grad()
    def __call__(self, obs) -> torch.Tensor:
        obs = torch.as_tensor(np.asarray(obs, np.float32) if not torch.is_tensor(obs) else obs, device=self.device)
        return torch.cat([self.net(chunk) for chunk in obs.split(65536)]) if len(obs) else obs.new_zeros(0)


class QuantileReference:
    """rlox's calibration threshold as V_ref: one value for every state, the ``tau``-quantile of the returns of the
    episodes seen so far (conf/reference/quantile.yaml). Each new episode's return moves it, and every buffer it is
    attached to is rewritten with the new value, so that all transitions share the one current threshold."""

    def __init__(self, tau: float, offline_returns: np.ndarray):
        self.tau = tau
        self.offline_returns = np.asarray(offline_returns, np.float64)
        self.online_returns: list[float] = []
        self.buffers: list = []

    @property
    def threshold(self) -> float:
        return float(np.quantile(np.concatenate([self.offline_returns, self.online_returns]), self.tau))

    def attach(self, buffer) -> None:
        """Keep ``buffer``'s V_ref column at the threshold (it is written now)."""
        self.buffers.append(buffer)
        self._rewrite()

    def _rewrite(self) -> None:
        value = self.threshold
        for buffer in self.buffers:
            buffer.set_all_v_ref(value)

    def episode_values(self, mc_returns: torch.Tensor, observations) -> torch.Tensor:
        """A finished episode: its return (the return-to-go at its first step) joins the others; every state's
        V_ref becomes the new threshold."""
        self.online_returns.append(float(mc_returns[0]))
        self._rewrite()
        return torch.full_like(mc_returns, self.threshold)

    def state(self) -> dict:
        return {"online_returns": list(self.online_returns)}

    def load_state(self, state: dict) -> None:
        self.online_returns = list(state["online_returns"])
        self._rewrite()


def reference_error(v_ref: torch.Tensor, mc_returns: torch.Tensor) -> dict[str, float]:
    """How far a learned V_ref is from the Monte-Carlo returns it stands in for (``o2o.metrics.REFERENCE_KEYS``)."""
    v, g = v_ref.double(), mc_returns.double()
    error = v - g
    corr = torch.corrcoef(torch.stack([v, g]))[0, 1] if len(v) > 1 and v.std() > 0 and g.std() > 0 else torch.nan
    return dict(zip(M.REFERENCE_KEYS, (error.abs().mean().item(), error.mean().item(),
                                        error.pow(2).mean().sqrt().item(), float(corr))))
