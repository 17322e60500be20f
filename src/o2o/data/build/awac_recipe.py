"""``o2o/door/awac-recipe-v0``: door data made the way AWAC made its ``door2_sparse.npy`` + ``door_bc_sparse4.npy``,
built here from the DAPG assets. It is NOT AWAC's files (those are the Cal-QL paper's data, read by
o2o.data.awac from ``env.dataset.path``); it follows their recipe as far as the recipe is published.

What is traced, and to where:

- **The demonstrations**: the 25 DAPG human door demonstrations (AWAC's ``door2_sparse.npy`` holds 25; Cal-QL
  reads all of them, ``get_hand_dataset_with_mc_calculation``).
- **How many BC rollouts**: 500. RLPD's author on the AWAC files (ikostrikov/rlpd issue #2, philipjball,
  2023-08-02): "22 expert demos, and then 450 BC trajectories", after RLPD's 0.9 train split of each file
  (rlkit ``awac_rl.py``: ``train_split=0.9`` for ``door_bc_sparse4.npy``), so the BC file holds 500. Cal-QL uses
  the whole file.
- **Horizon**: door 200 steps (rlkit ``rlkit/launchers/experiments/awac/awac_rl.py``: ``'door-binary-v0':
  max_path_length 200``), the same as D4RL's door. For pen rlkit also says 200, but the env registers 100 (mj_envs
  ``pen-v0``, Gymnasium-Robotics ``AdroitHandPen-v1``, D4RL's pen data, the paper's pen episodes): the builder
  uses the env's 100, a departure for pen.
- **Pen and relocate** (``o2o/<task>/awac-recipe-expert-demos-v0``): hand_dapg publishes human demonstrations for
  door only, so 25 episodes of the DAPG expert policy, sampled with its own noise, stand in for AWAC's 25 human
  ones; the ids say so.
- **The BC policy's form and loss**: the policy class of AWAC's hand experiments (rlkit
  ``examples/awac/hand/awac1.py``: ``GaussianPolicy``, hidden 256-256, ``std_architecture="values"``, log-std in
  [-6, 0]; ``rlkit/torch/sac/policies/gaussian_policy.py``: tanh mean, relu hidden layers, a state-independent
  log-std ``min + sigmoid(logits) * (max - min)``; ``rlkit/torch/networks/mlp.py``: fan-in initialised hidden
  layers with zero biases, last layer uniform +-1e-3), fit by maximum likelihood as rlkit's
  ``AWACTrainer.pretrain_policy_with_bc`` does (negative log-likelihood of the data actions, Adam at AWAC's hand
  ``policy_lr`` 3e-4 and ``policy_weight_decay`` 1e-4, ``bc_batch_size`` 128).
- **AWAC's noise**: the rollouts sample that Gaussian with its own fitted standard deviation (clipped to the action
  space by the env's bounds), as D4RL's expert data samples the DAPG policy with its own noise.

What could not be found (neither in the AWAC paper as readable here, arXiv 2006.09359, nor in rlkit, whose public
tree has no script that writes ``*_bc_sparse*.npy``): the number of BC training steps, whether the rollouts added
noise beyond the policy's own, and how the ``4`` of ``sparse4`` differs from versions 1-3. Here the number of
steps is measured instead of assumed: the fit keeps the weights with the lowest negative log-likelihood on a
held-out 10% of the demonstration transitions (rlkit's BC pre-training also reports a test buffer's
log-likelihood), checked every ``check_every`` steps up to ``max_steps``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
from torch import nn

AWAC_BC_ROLLOUTS = 500  # rlpd issue #2: 450 after a 0.9 split
AWAC_HORIZON = 200  # rlkit awac_rl.py, door-binary-v0 (and the other two; the builder keeps pen at its env's 100)
HIDDEN, LOG_STD_RANGE = (256, 256), (-6.0, 0.0)  # rlkit awac1.py policy_kwargs
LR, WEIGHT_DECAY, BATCH = 3e-4, 1e-4, 128  # awac1.py trainer_kwargs; AWACTrainer's bc_batch_size default
HELD_OUT = 0.1  # rlkit's train_split 0.9


class GaussianBC(nn.Module):
    """rlkit's ``GaussianPolicy`` with ``std_architecture="values"``: tanh mean, one learned log-std per action."""

    def __init__(self, obs_dim: int, act_dim: int):
        super().__init__()
        sizes = (obs_dim, *HIDDEN)
        self.hidden = nn.ModuleList(nn.Linear(a, b) for a, b in zip(sizes[:-1], sizes[1:]))
        for fc in self.hidden:  # rlkit's fanin_init: uniform +-1/sqrt(fan_in), zero bias
            bound = 1.0 / math.sqrt(fc.in_features)
            nn.init.uniform_(fc.weight, -bound, bound)
            nn.init.zeros_(fc.bias)
        self.last = nn.Linear(HIDDEN[-1], act_dim)
        nn.init.uniform_(self.last.weight, -1e-3, 1e-3)
        nn.init.uniform_(self.last.bias, -1e-3, 1e-3)
        self.log_std_logits = nn.Parameter(torch.zeros(act_dim))

    def forward(self, obs: torch.Tensor) -> torch.distributions.Normal:
        h = obs  # unnormalised, as rlkit (normalize_env=False); the demonstrations' per-dimension std is 0.05-0.85
        for fc in self.hidden:
            h = torch.relu(fc(h))
        low, high = LOG_STD_RANGE
        log_std = low + torch.sigmoid(self.log_std_logits) * (high - low)
        return torch.distributions.Normal(torch.tanh(self.last(h)), log_std.exp())

    def nll(self, obs: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        return -self(obs).log_prob(act).sum(-1).mean()


def fit_gaussian_bc(observations: np.ndarray, actions: np.ndarray, seed: int, max_steps: int = 20_000,
                    check_every: int = 500) -> tuple[GaussianBC, dict]:
    """Maximum-likelihood BC on (observations, actions); returns the weights with the best held-out NLL and a
    record of the fit (the step kept, its train / held-out NLL, the fitted action std, every check's held-out
    NLL). The held-out part is a seeded random 10% of the transitions."""
    generator = torch.Generator().manual_seed(seed)
    obs, act = torch.as_tensor(observations, dtype=torch.float32), torch.as_tensor(actions, dtype=torch.float32)
    order = torch.randperm(len(obs), generator=generator)
    n_held = max(1, int(round(HELD_OUT * len(obs))))
    held, train = order[:n_held], order[n_held:]
    torch.manual_seed(seed)
    policy = GaussianBC(obs.shape[1], act.shape[1])
    optimizer = torch.optim.Adam(policy.parameters(), lr=LR, weight_decay=WEIGHT_DECAY)
    best, history = (math.inf, 0, None), []
    for step in range(1, max_steps + 1):
        idx = train[torch.randint(0, len(train), (BATCH,), generator=generator)]
        loss = policy.nll(obs[idx], act[idx])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % check_every == 0 or step == max_steps:
            with torch.no_grad():
                held_nll = float(policy.nll(obs[held], act[held]))
            history.append((step, held_nll))
            if held_nll < best[0]:
                best = (held_nll, step, {k: v.clone() for k, v in policy.state_dict().items()})
    policy.load_state_dict(best[2])
    with torch.no_grad():
        train_nll = float(policy.nll(obs[train], act[train]))
        std = policy(obs[:1]).stddev[0]
    return policy, {"bc_step_kept": best[1], "bc_train_nll": train_nll, "bc_held_out_nll": best[0],
                    "bc_action_std_mean": float(std.mean()), "bc_max_steps": max_steps, "bc_held_out_history": history}


BC_WEIGHTS = "o2o_awac_bc.npz"  # beside a built dataset's data/: the fitted policy's weights (and .json: the fit)


def save_bc(policy: GaussianBC, fit: dict, path: Path) -> None:
    """The fitted policy's weights as plain arrays (np.load reads them back without running any code) and the
    record of its fit beside them."""
    np.savez(path, **{k: v.detach().cpu().numpy() for k, v in policy.state_dict().items()})
    Path(str(path) + ".json").write_text(json.dumps(fit))


def load_bc(path: Path, obs_dim: int, act_dim: int) -> tuple[GaussianBC, dict]:
    """The policy :func:`save_bc` kept, rolled out again instead of a new fit. Measured on one AMD EPYC: pen's fit
    differs between ATen's AVX2 and AVX-512 kernels, and its rollouts from kept weights are bit-identical under both;
    other CPUs (MKL's own code paths, other vendors) are not measured, and a restore checks the data's SHA-256."""
    from o2o.errors import DatasetError

    policy = GaussianBC(obs_dim, act_dim)
    try:
        with np.load(path, allow_pickle=False) as weights:
            policy.load_state_dict({k: torch.as_tensor(weights[k]) for k in weights.files})
    except (OSError, ValueError, RuntimeError, KeyError) as err:
        raise DatasetError(f"{path} is not the weights of this task's AWAC-recipe BC policy "
                           f"({type(err).__name__}): give the o2o_awac_bc.npz its build kept") from None
    side = Path(str(path) + ".json")
    return policy, (json.loads(side.read_text()) if side.is_file() else {})


def sampling_policy(policy: GaussianBC, rng: np.random.Generator):
    """The fitted Gaussian sampled with its own std (noise drawn from ``rng`` so a build is reproducible)."""

    def act(obs: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            dist = policy(torch.as_tensor(obs, dtype=torch.float32))
        noise = rng.standard_normal(dist.mean.shape)
        return np.clip(dist.mean.numpy() + dist.stddev.numpy() * noise, -1.0, 1.0).astype(np.float32)

    return act
