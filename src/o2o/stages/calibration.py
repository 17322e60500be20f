"""The Cal-QL paper's calibration diagnostics, on one fixed batch of offline transitions.

Training batches change every step, so Q measured on them is noisy and not
comparable across time or runs. :class:`CalibrationProbe` draws one batch of
offline transitions (seeded by the run's seed, the same batch through the run,
offline and online) and fixed policy noise, and at every log flush reports
under ``<phase>/calibration/``:

- ``q_data``: mean over the batch of Q(s, a_data), ensemble mean;
- ``q_policy``: mean over the batch of Q(s, a ~ pi(.|s)) (ensemble and ``PROBE_ACTIONS`` samples): the learned
  policy's value, which Cal-QL calibrates against V_ref (calibrated: Q(s, pi(s)) >= V_ref(s); paper, Def. 4.1);
- ``v_ref``: mean reference value V_ref(s) the run uses: the Monte-Carlo return-to-go of the data, or what
  ``reference=`` puts in its place (o2o.reference);
- ``q_data_over_v_ref``: their ratio (1 is calibrated in scale; Cal-QL paper, Fig. 2);
- ``below_v_ref``: fraction of states whose Q(s, a_data) is below V_ref(s);
- ``bound_rate``: fraction of Q(s, a ~ pi(.|s)) (each ensemble member, ``PROBE_ACTIONS`` samples per
  state) below V_ref(s): how often Cal-QL's max(Q, V_ref) would bind there (``calql_bound``'s rate).
"""
from __future__ import annotations

import numpy as np
import torch

from o2o import metrics as M
from o2o.agents.encoders import Encoded
from o2o.buffers import TransitionBuffer

PROBE_ACTIONS = 10  # policy samples per state: the Cal-QL authors' cql_n_actions


def policy_samples(actor, obs: torch.Tensor, k: int, eps: torch.Tensor) -> torch.Tensor:
    """``k`` stochastic actions per state (B * k, A), state-major; an image actor encodes each frame once."""
    if isinstance(actor, Encoded):
        return actor.net.act(actor.encode(obs).repeat_interleave(k, 0), False, eps)
    return actor.act(obs.repeat_interleave(k, 0), False, eps)


class CalibrationProbe:
    def __init__(self, offline: TransitionBuffer, size: int, seed: int):
        idx = np.random.default_rng(seed).choice(len(offline), size=min(size, len(offline)), replace=False)
        self.batch = offline.batch(torch.as_tensor(np.sort(idx), device=offline.device))
        generator = torch.Generator(device=offline.device).manual_seed(seed)
        self.eps = torch.randn(len(idx) * PROBE_ACTIONS, 1, offline.act_dim, generator=generator,
                               device=offline.device)

    @torch.no_grad()
    def __call__(self, agent) -> dict[str, float]:
        b = self.batch
        n = len(b.rewards)
        with agent.autocast():
            q_data = agent.critic(b.obs, b.actions.unsqueeze(1)).float().mean(0)[:, 0]  # (B,)
            actions = policy_samples(agent.actor, b.obs, PROBE_ACTIONS, self.eps)
            q_pi = agent.critic(b.obs, actions.float().view(n, PROBE_ACTIONS, -1)).float()  # (E, B, K)
        v_ref = b.v_ref
        values = torch.stack([q_data.mean(), q_pi.mean(), v_ref.mean(), q_data.mean() / v_ref.mean(),
                              (q_data < v_ref).float().mean(), (q_pi < v_ref.view(1, n, 1)).float().mean()])
        return dict(zip(M.CALIBRATION_KEYS, values.cpu().tolist()))
