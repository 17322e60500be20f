"""Networks shared by every agent: a tanh-Gaussian actor and an ensemble of Q-functions."""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

LOG_STD_MIN, LOG_STD_MAX = -20.0, 2.0


def mlp(obs_dim: int, hidden: list[int], dropout: float = 0.0, layer_norm: bool = False) -> tuple[nn.Sequential, int]:
    """ReLU layers of the given widths (dropout after each when > 0; with ``layer_norm`` a LayerNorm between each
    linear layer and its ReLU, as WSRL's MLP); returns them and the last width."""
    layers, width = [], obs_dim
    for h in hidden:
        layers += [nn.Linear(width, h), *([nn.LayerNorm(h)] if layer_norm else []), nn.ReLU()]
        if dropout:
            layers.append(nn.Dropout(dropout))
        width = h
    return nn.Sequential(*layers), width


def _orthogonal_(weight: torch.Tensor, gain: float) -> None:
    """Orthogonal init of a (in, out) matrix, as nn.init does for (out, in)."""
    with torch.no_grad():
        weight.copy_(nn.init.orthogonal_(torch.empty(weight.shape[::-1]), gain=gain).T)


class TanhGaussianActor(nn.Module):
    """A state-dependent tanh-squashed Gaussian: log_std = multiplier * head output + offset, clipped.

    The Cal-QL authors' policy (nakamotoo/Cal-QL, JaxCQL/model.py, TanhGaussianPolicy) starts with
    multiplier 1 and offset -1 and, with ``trainable_log_std_transform``, trains both with the actor (their
    ``Scalar`` modules); RLPD's TanhNormal is offset 0, fixed.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], orthogonal_init: bool = True,
                 trainable_log_std_transform: bool = False, log_std_offset: float = 0.0, layer_norm: bool = False):
        super().__init__()
        self.log_std_multiplier = nn.Parameter(torch.tensor(1.0), requires_grad=trainable_log_std_transform)
        self.log_std_offset = nn.Parameter(torch.tensor(float(log_std_offset)), requires_grad=trainable_log_std_transform)
        self.trunk, width = mlp(obs_dim, hidden, layer_norm=layer_norm)
        self.head = nn.Linear(width, 2 * act_dim)
        if orthogonal_init:
            for module in self.trunk:
                if isinstance(module, nn.Linear):
                    nn.init.orthogonal_(module.weight, gain=math.sqrt(2.0))
                    nn.init.zeros_(module.bias)
            nn.init.orthogonal_(self.head.weight, gain=1e-2)
            nn.init.zeros_(self.head.bias)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean, log_std = self.head(self.trunk(obs)).chunk(2, dim=-1)
        log_std = (self.log_std_multiplier * log_std + self.log_std_offset).clamp(LOG_STD_MIN, LOG_STD_MAX)
        return mean.float(), log_std.float()

    @staticmethod
    def log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """log pi(a|s) of given actions (B, A), clipped just inside (-1, 1) so atanh stays finite."""
        pre_tanh = torch.atanh(actions.clamp(-1.0 + eps, 1.0 - eps))
        z = (pre_tanh - mean) / log_std.exp()
        gaussian_log_prob = (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        squash = (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)
        return gaussian_log_prob - squash

    @staticmethod
    def sample(mean: torch.Tensor, log_std: torch.Tensor, eps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Reparameterised tanh-Gaussian samples and their log-probabilities.

        ``mean``/``log_std`` are (B, A); ``eps`` is (B, K, A) standard normal
        noise, so each state's distribution is computed once and sampled K times.
        """
        mean, log_std = mean.unsqueeze(1), log_std.unsqueeze(1)
        pre_tanh = mean + log_std.exp() * eps
        gaussian_log_prob = (-0.5 * eps.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)
        # log(1 - tanh(u)^2), written stably
        squash = (2.0 * (math.log(2.0) - pre_tanh - F.softplus(-2.0 * pre_tanh))).sum(-1)
        return torch.tanh(pre_tanh), gaussian_log_prob - squash

    def act(self, obs: torch.Tensor, deterministic: bool, eps: torch.Tensor) -> torch.Tensor:
        """tanh(mean), or a tanh-Gaussian sample with noise ``eps`` (B, 1, A)."""
        mean, log_std = self(obs)
        return torch.tanh(mean) if deterministic else self.sample(mean, log_std, eps)[0][:, 0]


class GaussianActor(nn.Module):
    """IQL's policy (ikostrikov/implicit_q_learning, policy.py NormalTanhPolicy with tanh_squash_distribution
    False and state_dependent_std False): a Gaussian whose mean is tanh of the network's output and whose
    log-std is one learned vector, clipped to [-5, 2]; dropout after each hidden layer where the authors use
    it. Samples are clipped to the action bounds, as their ``sample_actions``."""

    LOG_STD_MIN = -5.0

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], dropout: float = 0.0, orthogonal_init: bool = True):
        super().__init__()
        self.trunk, width = mlp(obs_dim, hidden, dropout)
        self.head = nn.Linear(width, act_dim)
        self.log_std = nn.Parameter(torch.zeros(act_dim))
        if orthogonal_init:  # the authors' default_init: orthogonal, gain sqrt(2), every layer and the mean head
            for module in [*self.trunk, self.head]:
                if isinstance(module, nn.Linear):
                    nn.init.orthogonal_(module.weight, gain=math.sqrt(2.0))
                    nn.init.zeros_(module.bias)

    def forward(self, obs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mean = torch.tanh(self.head(self.trunk(obs)))
        log_std = self.log_std.clamp(self.LOG_STD_MIN, LOG_STD_MAX).expand_as(mean)
        return mean.float(), log_std.float()

    @staticmethod
    def log_prob(mean: torch.Tensor, log_std: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
        z = (actions - mean) / log_std.exp()
        return (-0.5 * z.pow(2) - log_std - 0.5 * math.log(2 * math.pi)).sum(-1)

    def act(self, obs: torch.Tensor, deterministic: bool, eps: torch.Tensor) -> torch.Tensor:
        training = self.training
        self.eval()  # no dropout when acting (the authors' sample_actions: training=False)
        try:
            mean, log_std = self(obs)
        finally:
            self.train(training)
        return mean if deterministic else (mean + log_std.exp() * eps[:, 0]).clamp(-1.0, 1.0)


class EnsembleCritic(nn.Module):
    """E independent Q-networks evaluated together with batched matmuls.

    ``forward(obs (B, D), actions (B, K, A)) -> (E, B, K)``. The first layer
    is split into an observation part, computed once per state, and an action
    part, computed per sampled action.
    """

    def __init__(self, obs_dim: int, act_dim: int, hidden: list[int], ensemble_size: int = 2,
                 orthogonal_init: bool = True, layer_norm: bool = False, norm_after_activation: bool = False):
        """``layer_norm``: a LayerNorm in each hidden layer, before its ReLU (RLPD's, WSRL's) or, with
        ``norm_after_activation``, after it (ReBRAC's)."""
        super().__init__()
        self.ensemble_size, self.obs_dim = ensemble_size, obs_dim
        widths = [obs_dim + act_dim, *hidden, 1]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            self.weights.append(nn.Parameter(torch.empty(ensemble_size, fan_in, fan_out)))
            self.biases.append(nn.Parameter(torch.zeros(ensemble_size, 1, fan_out)))
        # LayerNorm with a scale and shift of each member's own
        self.norm_scales = nn.ParameterList(nn.Parameter(torch.ones(ensemble_size, 1, h)) for h in hidden)
        self.norm_shifts = nn.ParameterList(nn.Parameter(torch.zeros(ensemble_size, 1, h)) for h in hidden)
        self.layer_norm, self.norm_after_activation = layer_norm, norm_after_activation
        self.normalize_features = False  # the last hidden features scaled to unit length (retrain.feature_normalization)
        if not layer_norm:
            self.norm_scales, self.norm_shifts = nn.ParameterList(), nn.ParameterList()
        last = len(self.weights) - 1
        for i, weight in enumerate(self.weights):
            for member in weight:
                if orthogonal_init:
                    _orthogonal_(member, gain=1e-2 if i == last else math.sqrt(2.0))
                else:
                    bound = 1.0 / math.sqrt(member.shape[0])
                    nn.init.uniform_(member, -bound, bound)

    def forward(self, obs: torch.Tensor, actions: torch.Tensor, detach_weights: bool = False) -> torch.Tensor:
        """``detach_weights``: Q whose gradients reach the inputs only (the actor's loss)."""
        weights, biases = list(self.weights), list(self.biases)
        scales, shifts = list(self.norm_scales), list(self.norm_shifts)
        if detach_weights:
            weights, biases, scales, shifts = ([t.detach() for t in ts] for ts in (weights, biases, scales, shifts))
        batch, k, _ = actions.shape
        w0 = weights[0]
        if k == 1:
            # One action per state: one matmul on [s, a]. (The split below also gave NaN action gradients under
            # torch.compile with bf16 on CPU, from inductor's vectorised kernels: tests/test_compiled_update.py.)
            x = torch.matmul(torch.cat([obs, actions[:, 0]], dim=-1), w0) + biases[0]  # (E, B, H)
        else:
            per_state = torch.matmul(obs, w0[:, : self.obs_dim])  # (E, B, H)
            per_action = torch.matmul(actions.reshape(batch * k, -1), w0[:, self.obs_dim:])  # (E, B*K, H)
            x = per_action.view(self.ensemble_size, batch, k, -1) + per_state.unsqueeze(2) + biases[0].unsqueeze(1)
            x = x.reshape(self.ensemble_size, batch * k, -1)
        for i in range(1, len(weights)):
            if self.norm_after_activation:
                x = F.relu(x)
            if self.layer_norm:
                x = F.layer_norm(x, x.shape[-1:]) * scales[i - 1] + shifts[i - 1]
            if not self.norm_after_activation:
                x = F.relu(x)
            if self.normalize_features and i == len(weights) - 1:  # OOO's FullyConnectedNetwork: x / max(|x|, 1e-8)
                x = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-8)
            x = torch.baddbmm(biases[i], x, weights[i])
        return x.view(self.ensemble_size, batch, k).float()


class ObservationNormalizer(nn.Module):
    """(obs - mean) / std, the statistics kept as buffers (saved in the state dict, so in checkpoints and exported
    policies). Built without statistics it is the identity until a state dict fills it."""

    def __init__(self, obs_dim: int, stats=None, eps: float = 0.0):
        super().__init__()
        mean = torch.zeros(obs_dim) if stats is None else torch.as_tensor(stats.mean, dtype=torch.float32)
        std = torch.ones(obs_dim) if stats is None else torch.as_tensor(stats.std, dtype=torch.float32) + eps
        self.register_buffer("mean", mean.clone())
        self.register_buffer("std", std.clone())

    def forward(self, obs: torch.Tensor) -> torch.Tensor:
        return (obs - self.mean) / self.std
