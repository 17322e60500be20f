"""IQL, SAC and RLPD losses on fixed inputs against a plain, sample-by-sample formulation of their authors' equations.

IQL: ikostrikov/implicit_q_learning critic.py (update_v, update_q) and actor.py (awr); SAC and RLPD:
ikostrikov/rlpd sac_learner.py (update_critic with a subset of the target ensemble, update_actor).
"""
import math

import pytest
import torch

from conftest import algo_config, plain_q
from test_cql_losses import plain_policy as plain_tanh_policy  # the tanh-Gaussian sample and log-probability
from o2o.buffers import Batch
from o2o.agents.iql import IQL
from o2o.agents.sac import SAC

OBS, ACT, B = 3, 2, 5


def make(cls, name, **overrides):
    torch.manual_seed(0)
    cfg = algo_config(name, actor_hidden=[8, 8], critic_hidden=[8, 8], **overrides)
    return cls(OBS, ACT, cfg, torch.device("cpu"))


def make_batch():
    g = torch.Generator().manual_seed(1)
    return Batch(torch.randn(B, OBS, generator=g), torch.rand(B, ACT, generator=g) * 1.8 - 0.9,
                 torch.randn(B, generator=g), torch.randn(B, OBS, generator=g),
                 torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0]), torch.zeros(B))


def test_iql_losses_equal_the_authors_equations():
    agent = make(IQL, "iql", expectile=0.8, awr_temperature=3.0, gamma=0.9)
    batch = make_batch()
    with torch.no_grad():
        _, m = agent.compute_losses(batch, {})
        m["value_loss"] = agent.value_loss(batch, {})[0]
        value_loss = critic_loss = actor_loss = 0.0
        for b in range(B):
            s, a, s2 = batch.obs[b], batch.actions[b], batch.next_obs[b]
            q_target = min(plain_q(agent.critic_target, i, s, a) for i in range(2))
            v = agent.v(s.unsqueeze(0))[0]
            u = q_target - v
            value_loss += abs(0.8 - float(u < 0)) * u ** 2 / B  # expectile regression of V on min Q_target
            target = batch.rewards[b] + 0.9 * (1 - batch.dones[b]) * agent.v(s2.unsqueeze(0))[0]
            critic_loss += sum((plain_q(agent.critic, i, s, a) - target) ** 2 for i in range(2)) / B
            mean, log_std = agent.actor(s.unsqueeze(0))
            log_pi = torch.distributions.Normal(mean[0], log_std[0].exp()).log_prob(a).sum()  # no tanh correction
            actor_loss += -min(math.exp(3.0 * u.item()), 100.0) * log_pi / B
    torch.testing.assert_close(m["value_loss"], value_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m["critic_loss"], critic_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m["actor_loss"], actor_loss, rtol=1e-5, atol=1e-6)


def test_iql_updates_v_first_and_q_and_the_actor_use_the_new_v():
    """The authors' learner.py: update_v, then awr_update_actor and update_q with new_value; here against a plain
    formulation: V stepped alone by Adam on the expectile loss, then the TD target and the weights from that V."""
    import copy

    agent = make(IQL, "iql", expectile=0.8, awr_temperature=3.0, gamma=0.9)
    batch = make_batch()
    plain = copy.deepcopy(agent)
    v_params = list(plain.value.parameters())
    adam = torch.optim.Adam(v_params, lr=plain.cfg.critic_lr)
    loss, _ = plain.value_loss(batch, {})
    adam.zero_grad()
    loss.backward()
    adam.step()  # V alone, one Adam step
    with torch.no_grad():
        new_v_next = plain.v(batch.next_obs)
        old_v_next = agent.v(batch.next_obs)
    before = {n: p.detach().clone() for n, p in agent.named_parameters()}
    m = agent.update(batch)
    for name, p in agent.named_parameters():
        if name.startswith("value"):
            torch.testing.assert_close(p, dict(plain.named_parameters())[name], rtol=1e-6, atol=1e-7)
    assert not torch.allclose(new_v_next, old_v_next)  # the step moved V, so the test can tell them apart
    td_target = batch.rewards + 0.9 * (1 - batch.dones) * new_v_next
    torch.testing.assert_close(m["td_target"], td_target.mean(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(m["value_loss"], loss.detach(), rtol=1e-6, atol=1e-7)
    assert any(not torch.equal(before[n], p) for n, p in agent.critic.named_parameters(prefix="critic"))
    assert agent.grad_steps == 1


def test_iql_policy_mean_is_tanh_bounded_and_its_std_state_independent():
    agent = make(IQL, "iql")
    mean, log_std = agent.actor(torch.randn(7, OBS) * 100)
    assert mean.abs().max() <= 1.0 and torch.equal(log_std, log_std[:1].expand_as(log_std))
    action = agent.act(torch.randn(OBS).numpy(), deterministic=False)
    assert abs(action).max() <= 1.0


@pytest.mark.parametrize("name, subset, backup", [("rlpd", 2, True), ("rlpd", 1, False), ("sac", None, True)])
def test_sac_and_rlpd_losses_equal_the_authors_equations(name, subset, backup):
    overrides = {"ensemble_size": 4, "target_subset": subset} if name == "rlpd" else {}
    agent = make(SAC, name, backup_entropy=backup, gamma=0.9, **overrides)
    batch = make_batch()
    torch.manual_seed(7)
    noise = {**agent.draw_noise(B), **agent.draw_target_subset()}
    members = agent.cfg.ensemble_size
    with torch.no_grad():
        _, m = agent.compute_losses(batch, noise, update_actor=True)
        torch.manual_seed(7)  # the same random subset of target critics (RLPD: subsample_ensemble)
        agent.draw_noise(B)
        chosen = torch.randperm(members)[:subset].tolist() if subset else list(range(members))
        alpha = agent.log_alpha.exp()
        critic_loss = actor_loss = 0.0
        for b in range(B):
            s, a, s2 = batch.obs[b], batch.actions[b], batch.next_obs[b]
            a2, log_pi2 = plain_tanh_policy(agent.actor, s2, noise["eps_next"][b, 0])
            next_q = min(plain_q(agent.critic_target, i, s2, a2) for i in chosen)
            target = batch.rewards[b] + 0.9 * (1 - batch.dones[b]) * next_q
            if backup:
                target = target - 0.9 * (1 - batch.dones[b]) * alpha * log_pi2
            critic_loss += sum((plain_q(agent.critic, i, s, a) - target) ** 2 for i in range(members)) / B
            a_pi, log_pi = plain_tanh_policy(agent.actor, s, noise["eps_actor"][b, 0])
            qs = [plain_q(agent.critic, i, s, a_pi) for i in range(members)]
            q_pi = sum(qs) / members if name == "rlpd" else min(qs)  # RLPD's actor: the ensemble mean
            actor_loss += (alpha * log_pi - q_pi) / B
    torch.testing.assert_close(m["critic_loss"], critic_loss, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m["actor_loss"], actor_loss, rtol=1e-5, atol=1e-5)


def test_rlpd_target_entropy_is_half_the_action_dimension():
    assert make(SAC, "rlpd").target_entropy == -ACT / 2
    assert make(SAC, "sac").target_entropy == -ACT


def test_iql_actor_learning_rate_follows_a_cosine_to_zero():
    torch.manual_seed(0)
    cfg = algo_config("iql", actor_hidden=[8], critic_hidden=[8], actor_lr_schedule="cosine")
    agent = IQL(OBS, ACT, cfg, torch.device("cpu"), total_updates=4)
    rates = []
    for _ in range(4):
        agent.update(make_batch())
        rates.append([g["lr"] for g in agent.optimizer.param_groups])
    lr = cfg.actor_lr
    assert [r[0] for r in rates] == pytest.approx([lr * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(1, 5)])
    assert all(r[1:] == rates[0][1:] for r in rates)  # critic and value keep theirs
    restored = IQL(OBS, ACT, cfg, torch.device("cpu"), total_updates=4)
    restored.restore(agent.checkpoint())
    assert restored.optimizer.param_groups[0]["lr"] == pytest.approx(rates[-1][0])


def test_iql_acts_without_dropout_and_keeps_training_with_it():
    agent = make(IQL, "iql", actor_dropout=0.5)
    obs = torch.randn(OBS).numpy()
    first = agent.act(obs, deterministic=True)
    assert all((agent.act(obs, deterministic=True) == first).all() for _ in range(5))  # no dropout noise
    assert agent.actor.training  # the updates still train with dropout
