"""Intrinsic rewards: ``exploration=rnd`` (OOO's, from the start of pre-training), ``rnd_trained`` or ``qknn``.

Each intrinsic reward has ``reward(batch, agent)``, the bonus of a batch, and ``update(batch)``, a step of its own
model on that batch (RND's predictor; QKNN has none); o2o.stages.common.Learner calls both for every sampled batch,
offline and online transitions alike, and adds the bonus to the batch's (transformed) rewards before the agent's
update: ``r + coef * bonus``. The buffers keep the task's rewards, so the
Monte-Carlo returns (V_ref), the report and offline retraining (stages/retrain.py) never see the bonus.

- **RND** (Burda et al. 2019) as OOO uses it (Sobol Mark et al., "Offline Retraining for Online RL",
  MaxSobolMark/OOO, OOO_for_calql/rnd_net.py, model.py, conservative_sac.py and conservative_sac_main.py): a fixed
  random network and a predictor, both 2x512 ReLU MLPs with a 512-wide output (orthogonal init, gain sqrt 2, the
  output 1e-2), on next observations normalised by a running mean and variance and clipped to [-5, 5]; the bonus
  is the largest squared feature error divided by the running standard deviation of the bonus, whose statistics
  are updated with the bonus already so divided (as OOO's code does); the predictor trains with Adam 1e-4 on a
  random quarter of each batch. OOO adds it to every training batch from the first pre-training step
  (``exploration.pretraining``), so the predictor knows the offline states when fine-tuning begins.
  What OOO's published runs computed differs (``exploration=rnd``, ``rnd_trains: false``): its ``_train_step`` is
  ``jax.jit`` with ``self`` static and reads the RND predictor and both running statistics from
  ``self._train_states`` (not from its ``train_states`` argument), so they are trace-time constants; with the
  static arguments of ooo_for_calql_scripts.md fixed for the whole run, and the same batch structure offline and
  online (``concatenate_batches`` keeps the offline batch's keys), it is traced once, at the first pre-training
  step, and every later step scores next states with the initial predictor, observations normalised by the initial
  statistics (mean 0, variance 1, so only clipped) and the bonus divided by 1: a bonus that never decays. The
  code as it reads is ``exploration=rnd_trained``. OOO's intrinsic Monte-Carlo returns for Cal-QL's bound have no
  effect in its code (``mc_returns += ...`` rebinds a local; the bound reads ``batch["mc_returns"]``) and none here.
- **QKNN** (``exploration=qknn``), this project's Q-conditioned state-entropy bonus, after the idea of SERA (Zhang
  et al., "Sample Efficient Reward Augmentation in offline-to-online RL", arXiv 2310.19805) but not SERA: SERA's
  own estimator, the Q it conditions on, its neighbour set and its experiments' coefficients could not be read
  here (the paper's method section is not in the stored copies; no public code of it was found), so no switch
  carries its name (``exploration=sera`` is refused with that reason). For each state of the batch its k-th nearest neighbour is found in the
  joint space of state and value, with the maximum of the two distances (the value-conditional estimator of Kim
  et al. 2023, arXiv 2305.19476, on which SERA says it builds), each distance divided by its mean over the batch so the
  two are comparable; the bonus is the particle estimate log(1 + ||s - s_kNN||) (RE3, Seo et al. 2021: k = 3,
  the + 1 inside the log). The value is the critic ensemble's minimum Q(s, a) at the batch's actions.
  Differs on purpose: the neighbours come from the training batch, not from a separate buffer sample.
"""
from __future__ import annotations

import torch
from torch import nn

from o2o.agents.networks import mlp
from o2o.buffers import Batch


class RunningMeanStd:
    """Mean and variance of a stream of batches (the parallel algorithm; OOO's RunningMeanStd)."""

    def __init__(self, shape=(), device=None):
        self.mean = torch.zeros(shape, dtype=torch.float64, device=device)
        self.var = torch.ones(shape, dtype=torch.float64, device=device)
        self.count = 1e-4

    def update(self, x: torch.Tensor) -> None:
        x = x.double()
        batch_mean, batch_var, n = x.mean(0), x.var(0, unbiased=False), x.shape[0]
        delta, total = batch_mean - self.mean, self.count + n
        self.mean = self.mean + delta * n / total
        self.var = (self.var * self.count + batch_var * n + delta.pow(2) * self.count * n / total) / total
        self.count = total

    def state(self) -> dict:
        return {"mean": self.mean.cpu(), "var": self.var.cpu(), "count": self.count}

    def load_state(self, state: dict) -> None:
        self.mean, self.var = state["mean"].to(self.mean.device), state["var"].to(self.var.device)
        self.count = state["count"]


def _features(obs_dim: int, hidden: list[int]) -> nn.Sequential:
    """RND's network, OOO's FullyConnectedNetwork with orthogonal_init (OOO_for_calql/model.py): the hidden layers at
    orthogonal gain sqrt(2), a linear output as wide as the last of them at gain 1e-2, zero biases."""
    body, width = mlp(obs_dim, hidden)
    net = nn.Sequential(*body, nn.Linear(width, hidden[-1]))
    linears = [layer for layer in net if isinstance(layer, nn.Linear)]
    for layer in linears:
        nn.init.orthogonal_(layer.weight, gain=1e-2 if layer is linears[-1] else 2.0 ** 0.5)
        nn.init.zeros_(layer.bias)
    return net


class RND:
    """Random network distillation: large on states unlike those trained on, shrinking as they are revisited."""

    def __init__(self, obs_dim: int, cfg, seed: int, device: torch.device):
        self.cfg, self.device = cfg, device
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.target = _features(obs_dim, list(cfg.rnd_hidden)).to(device).requires_grad_(False)
            self.predictor = _features(obs_dim, list(cfg.rnd_hidden)).to(device)
        self.optimizer = torch.optim.Adam(self.predictor.parameters(), lr=cfg.rnd_lr)
        self.obs_rms = RunningMeanStd((obs_dim,), device)
        self.bonus_rms = RunningMeanStd((), device)
        self.generator = torch.Generator(device=device).manual_seed(seed + 1)
        self._last = None  # (batch, squared errors, raw bonus) of the last reward(), for update() on the same batch

    def _normalise(self, obs: torch.Tensor) -> torch.Tensor:
        return ((obs.double() - self.obs_rms.mean) / self.obs_rms.var.sqrt()).clamp(-5.0, 5.0).float()

    def error(self, next_obs: torch.Tensor) -> torch.Tensor:
        """Per state, the largest squared feature error of the predictor (before the bonus normalisation)."""
        x = self._normalise(next_obs)
        return (self.predictor(x) - self.target(x)).pow(2).amax(dim=1)

    def reward(self, batch: Batch, agent=None) -> torch.Tensor:
        """The bonus of the batch's next states, by the predictor as it stands (before its step on this batch):
        the largest squared feature error over the running std of the bonus."""
        x = self._normalise(batch.next_obs)
        with torch.set_grad_enabled(self.cfg.rnd_trains):
            squared = (self.predictor(x) - self.target(x)).pow(2)  # one forward for the bonus and the loss
        bonus = squared.detach().amax(dim=1) / self.bonus_rms.var.sqrt().float()
        self._last = batch, squared, bonus
        return bonus

    def update(self, batch: Batch) -> None:
        """One predictor step on the batch, then the running statistics, the bonus's updated with the normalised
        bonus as OOO's code does: the batch's states become familiar. With ``rnd_trains`` off (OOO's published
        runs), nothing changes."""
        if not self.cfg.rnd_trains:
            return
        if self._last is None or self._last[0] is not batch:
            self.reward(batch)
        _, squared, bonus = self._last
        self._last = None
        keep = torch.rand(len(squared), generator=self.generator, device=self.device) < self.cfg.rnd_update_proportion
        loss = (squared.mean(dim=1) * keep).sum() / keep.sum().clamp(min=1)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.bonus_rms.update(bonus)
        self.obs_rms.update(batch.obs)

    def state(self) -> dict:
        return {"predictor": self.predictor.state_dict(), "target": self.target.state_dict(),
                "optimizer": self.optimizer.state_dict(), "obs_rms": self.obs_rms.state(),
                "bonus_rms": self.bonus_rms.state(), "generator": self.generator.get_state()}

    def load_state(self, state: dict) -> None:
        self.predictor.load_state_dict(state["predictor"])
        self.target.load_state_dict(state["target"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.obs_rms.load_state(state["obs_rms"])
        self.bonus_rms.load_state(state["bonus_rms"])
        self.generator.set_state(state["generator"])


def q_conditioned_entropy(states: torch.Tensor, values: torch.Tensor, k: int) -> torch.Tensor:
    """QKNN's bonus for each of a set of states: log(1 + ||s - s_kNN||), the neighbour taken in the joint
    (state, value) space under the maximum of the two mean-normalised distances."""
    n = len(states)
    k = min(k, n - 1)
    d_state = torch.cdist(states.double(), states.double())
    d_value = (values.double()[:, None] - values.double()[None, :]).abs()
    off_diagonal = ~torch.eye(n, dtype=torch.bool, device=states.device)
    scale_state = d_state[off_diagonal].mean().clamp(min=1e-12)
    scale_value = d_value[off_diagonal].mean().clamp(min=1e-12)
    joint = torch.maximum(d_state / scale_state, d_value / scale_value)
    joint = joint.masked_fill(~off_diagonal, float("inf"))
    neighbour = joint.topk(k, dim=1, largest=False).indices[:, -1]
    return torch.log1p(d_state.gather(1, neighbour[:, None]).squeeze(1)).float()


class QKNN:
    def __init__(self, cfg):
        self.k = cfg.knn_k

    @torch.no_grad()
    def reward(self, batch: Batch, agent) -> torch.Tensor:
        with agent.autocast():
            q = agent.critic(batch.obs, batch.actions.unsqueeze(1)).float().amin(0)[:, 0]
        return q_conditioned_entropy(batch.obs, q, self.k)

    def update(self, batch: Batch) -> None:
        """A particle estimate has no model to train."""

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


def make_bonus(cfg, obs_dim: int, seed: int, device: torch.device):
    """The configured intrinsic reward, or None (``exploration=none``)."""
    if cfg.bonus == "rnd":
        return RND(obs_dim, cfg, seed, device)
    if cfg.bonus == "qknn":
        return QKNN(cfg)
    return None
