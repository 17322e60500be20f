"""ReBRAC, TD3+BC and AWAC losses on fixed inputs against a plain, sample-by-sample formulation of their authors'
equations, written out here.

ReBRAC: tinkoff-ai/ReBRAC src/algorithms/rebrac.py (update_actor, update_critic); TD3+BC: sfujim/TD3_BC TD3_BC.py
(train); AWAC: rail-berkeley/rlkit rlkit/torch/sac/awac_trainer.py (train_from_torch).
"""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import algo_config, compose, plain_q
from o2o.config import validate
from o2o import metrics as M
from o2o.agents.awac import AWAC
from o2o.agents.core import ObservationStats
from o2o.agents.rebrac import ReBRAC
from o2o.buffers import Batch

OBS, ACT, B = 3, 2, 6


def make(cls, name, obs_stats=None, total_updates=0, **overrides):
    torch.manual_seed(0)
    cfg = algo_config(name, **{"actor_hidden": [8, 8], "critic_hidden": [8, 8], **overrides})
    return cls(OBS, ACT, cfg, torch.device("cpu"), total_updates=total_updates, obs_stats=obs_stats)


def make_batch():
    g = torch.Generator().manual_seed(1)
    return Batch(torch.randn(B, OBS, generator=g), torch.rand(B, ACT, generator=g) * 1.8 - 0.9,
                 torch.randn(B, generator=g), torch.randn(B, OBS, generator=g),
                 torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0, 0.0]), torch.zeros(B), torch.rand(B, ACT, generator=g) * 2 - 1)


MEAN, STD = np.array([0.5, -0.5, 0.0], np.float32), np.array([2.0, 0.5, 1.0], np.float32)


def normalised(agent, s):
    """TD3+BC's (s - mean) / (std + 1e-3) of the data (main.py); ReBRAC's configs normalise nothing."""
    if agent.cfg.normalize_observations:
        return (s - torch.as_tensor(MEAN)) / (torch.as_tensor(STD) + 1e-3)
    return s


def plain_actor(agent, actor, s):
    """The deterministic actor layer by layer: tanh(W_out relu(...)) on the normalised s."""
    x = normalised(agent, s)
    for layer in actor.trunk:
        x = layer(x)
    return torch.tanh(actor.head(x))


def plain_critic_q(agent, critic, member, s, a):
    return plain_q(critic.ensemble, member, normalised(agent, s), a)


@pytest.mark.parametrize("name", ["rebrac", "td3bc"])
def test_rebrac_and_td3bc_losses_equal_their_authors_equations(name):
    agent = make(ReBRAC, name, obs_stats=ObservationStats(MEAN, STD), gamma=0.9, **({"actor_bc_weight": 0.3, "critic_bc_weight": 0.7}
                                                               if name == "rebrac" else {}))
    cfg, batch = agent.cfg, make_batch()
    noise = agent.draw_noise(B)
    with torch.no_grad():
        _, m = agent.compute_losses(batch, noise, update_actor=True)
        critic_loss = 0.0
        qs_pi, bcs = [], []
        for b in range(B):
            s, a, s2, a2_data = batch.obs[b], batch.actions[b], batch.next_obs[b], batch.next_actions[b]
            smoothing = (noise["target_noise"][b, 0] * 0.2).clamp(-0.5, 0.5)
            a2 = (plain_actor(agent, agent.actor_target, s2) + smoothing).clamp(-1, 1)
            next_q = min(plain_critic_q(agent, agent.critic_target, i, s2, a2) for i in range(2))
            if name == "rebrac":  # critic penalty on the data's next action, inside the bootstrap
                next_q = next_q - 0.7 * ((a2 - a2_data) ** 2).sum()
            target = batch.rewards[b] + 0.9 * (1 - batch.dones[b]) * next_q
            critic_loss += sum((plain_critic_q(agent, agent.critic, i, s, a) - target) ** 2 for i in range(2)) / B
            pi = plain_actor(agent, agent.actor, s)
            q = [plain_critic_q(agent, agent.critic, i, s, pi) for i in range(2)]
            qs_pi.append(min(q) if name == "rebrac" else q[0])
            bcs.append(((pi - a) ** 2).sum() if name == "rebrac" else ((pi - a) ** 2).mean())
        qs_pi, bcs = torch.stack(qs_pi), torch.stack(bcs)
        if name == "rebrac":  # (beta * bc - Q / mean|Q|).mean(), BC summed over actions, min of the critics
            actor_loss = (0.3 * bcs - qs_pi / qs_pi.abs().mean()).mean()
        else:  # -lambda * Q1.mean() + F.mse_loss(pi, a), lambda = 2.5 / mean|Q1|
            actor_loss = -(2.5 / qs_pi.abs().mean()) * qs_pi.mean() + bcs.mean()
    torch.testing.assert_close(m[M.CRITIC_LOSS], critic_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m[M.ACTOR_LOSS], actor_loss, rtol=1e-5, atol=1e-5)
    assert cfg.reads_next_actions == (name == "rebrac")


def test_td3bc_is_the_rebrac_agent_with_its_additions_off():
    # on a domain where neither has per-domain values: each YAML's own
    rebrac, td3bc = (validate(compose([f"algo={a}", "env=kitchen_mixed"])).algo for a in ("rebrac", "td3bc"))
    assert type(rebrac) is type(td3bc)
    differs = {k for k in vars(rebrac) if getattr(rebrac, k) != getattr(td3bc, k)}
    assert differs == {"name", "layer_norm", "actor_hidden", "critic_hidden", "init", "actor_lr", "critic_lr",
                       "critic_bc_weight", "alpha", "actor_q", "bc_reduction", "exploration_noise",
                       "normalize_observations", "online_actor_bc_floor"}
    assert (td3bc.critic_bc_weight, td3bc.layer_norm, td3bc.alpha, td3bc.actor_q, td3bc.bc_reduction) == (
        0.0, False, 2.5, "first", "mean")


def test_rebrac_network_layout_and_init_are_the_authors():
    agent = make(ReBRAC, "rebrac", actor_hidden=[32, 32, 32], critic_hidden=[32, 32, 32])
    trunk = [type(layer).__name__ for layer in agent.actor.trunk]
    assert trunk == ["Linear", "ReLU"] * 3  # actor_ln false
    first = agent.actor.trunk[0]
    assert torch.all(first.bias == 0.1) and first.weight.abs().max() <= 1 / math.sqrt(OBS)
    assert agent.actor.head.weight.abs().max() <= 1e-3
    critic = agent.critic.ensemble
    assert critic.layer_norm and critic.norm_after_activation  # Dense -> ReLU -> LayerNorm
    assert torch.all(critic.biases[0] == 0.1) and critic.weights[-1].abs().max() <= 3e-3
    # the critic's target starts equal to it; TD3+BC's biases are drawn, as nn.Linear's
    assert all(torch.equal(a, b) for a, b in zip(agent.critic.parameters(), agent.critic_target.parameters()))
    td3bc = make(ReBRAC, "td3bc")
    assert not td3bc.critic.ensemble.layer_norm and td3bc.critic.ensemble.biases[0].std() > 0


def test_rebrac_decays_the_actor_penalty_online_and_drops_the_critic_penalty():
    """CORL finetune/rebrac.py: decay = max(min_decay_coef, (N_online - t) / N_online) on actor_bc_coef, and
    critic_bc_coef * 0 for the whole online phase."""
    agent = make(ReBRAC, "rebrac", total_updates=100, actor_bc_weight=0.4, critic_bc_weight=0.2,
                 online_actor_bc_floor=0.5)
    agent.begin_phase(M.OFFLINE)
    assert agent.bc_weights() == (0.4, 0.2)
    agent.grad_steps = 60  # pre-training took 60 updates: 40 online ones planned
    agent.begin_phase(M.ONLINE)
    seen = []
    for t in (0, 10, 20, 30, 40):
        agent.grad_steps = 60 + t
        seen.append(agent.bc_weights())
    assert seen == [(0.4, 0.0), (pytest.approx(0.3), 0.0), (pytest.approx(0.2), 0.0), (pytest.approx(0.2), 0.0),
                    (pytest.approx(0.2), 0.0)]
    # the decay's origin travels in the checkpoint: a resumed run does not restart it
    agent.build_optimizer()
    resumed = make(ReBRAC, "rebrac", total_updates=100, actor_bc_weight=0.4, critic_bc_weight=0.2,
                   online_actor_bc_floor=0.5)
    resumed.restore(agent.checkpoint())
    resumed.begin_phase(M.ONLINE)
    assert resumed.online_start == 60 and resumed.bc_weights() == agent.bc_weights()


def plain_awac_policy(agent, s):
    x = s
    for layer in agent.actor.trunk:
        x = layer(x)
    mean = torch.tanh(agent.actor.head(x))
    log_std = -6.0 + torch.sigmoid(agent.actor.log_std_logits) * 6.0
    return mean, log_std


@pytest.mark.parametrize("value_from, clip, q_max", [("mean", 0.5, 0.0), ("sample", None, None)])
def test_awac_losses_equal_the_authors_equations(value_from, clip, q_max):
    agent = make(AWAC, "awac", gamma=0.9, value_from=value_from, advantage_clip=clip, critic_output_max=q_max,
                 beta=0.5, actor_weight_decay=1e-2)
    batch = make_batch()
    noise = agent.draw_noise(B)
    cap = (lambda q: q.clamp(max=q_max)) if q_max is not None else (lambda q: q)
    critic, critic_target = (getattr(c, "ensemble", c) for c in (agent.critic, agent.critic_target))  # unclamped
    if q_max is not None:  # the clamp is the critic's output: whoever reads Q (the calibration probe) sees it
        assert agent.critic(batch.obs, batch.actions.unsqueeze(1)).max() <= q_max
    with torch.no_grad():
        _, m = agent.compute_losses(batch, noise, update_actor=True)
        critic_loss, scores, log_pis = 0.0, [], []
        for b in range(B):
            s, a, s2 = batch.obs[b], batch.actions[b], batch.next_obs[b]
            mean2, log_std2 = plain_awac_policy(agent, s2)
            a2 = mean2 + log_std2.exp() * noise["eps_next"][b, 0]  # a sample, not squashed, not clipped
            next_q = min(cap(plain_q(critic_target, i, s2, a2)) for i in range(2))  # no entropy term (alpha 0)
            target = batch.rewards[b] + 0.9 * (1 - batch.dones[b]) * next_q
            q_data = [cap(plain_q(critic, i, s, a)) for i in range(2)]
            critic_loss += sum((q - target) ** 2 for q in q_data) / B
            mean, log_std = plain_awac_policy(agent, s)
            v_action = mean if value_from == "mean" else mean + log_std.exp() * noise["eps_value"][b, 0]
            v = min(cap(plain_q(critic, i, s, v_action)) for i in range(2))
            score = min(q_data) - v
            scores.append(min(score, torch.tensor(clip)) if clip is not None else score)
            log_pis.append(torch.distributions.Normal(mean, log_std.exp()).log_prob(a).sum())
        weights = F.softmax(torch.stack(scores) / 0.5, dim=0)  # over the batch
        log_pis = torch.stack(log_pis)
        actor_loss = (-log_pis * len(weights) * weights).mean()  # rlkit's form of -sum w_i log pi_i
    torch.testing.assert_close(m[M.CRITIC_LOSS], critic_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m[M.ACTOR_LOSS], actor_loss, rtol=1e-5, atol=1e-5)


def test_awac_weight_decay_is_adams_coupled_decay_on_the_policy():
    """0.5 * wd * |theta|^2 in the loss gives the gradient wd * theta, what Adam(weight_decay=wd) adds."""
    agent = make(AWAC, "awac", actor_weight_decay=0.1)
    plain = make(AWAC, "awac", actor_weight_decay=0.0)
    batch = make_batch()
    noise = agent.draw_noise(B)
    for a in (agent, plain):
        a.optimizer.zero_grad()
        a.compute_losses(batch, noise)[0].backward()
    for (name, p), q in zip(agent.actor.named_parameters(), plain.actor.parameters()):
        torch.testing.assert_close(p.grad, q.grad + 0.1 * p.detach(), msg=name)
    for p, q in zip(agent.critic.parameters(), plain.critic.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_awac_policy_is_rlkits_gaussian_and_acts_within_bounds():
    agent = make(AWAC, "awac")
    mean, log_std = agent.actor(torch.randn(4, OBS))
    torch.testing.assert_close(log_std, torch.full_like(log_std, -3.0))  # -6 + 6 sigmoid(0)
    assert mean.abs().max() < 1
    eps = torch.full((4, 1, ACT), 100.0)
    assert agent.actor.act(torch.randn(4, OBS), False, eps).abs().max() == 1.0  # clipped to the env's bounds
