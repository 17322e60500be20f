"""The vectorised CQL/Cal-QL update against a plain, loop-by-loop formulation of the same equations."""
import math

import pytest
import torch

from o2o.buffers import Batch
from o2o.agents.cql import CQL, calql_bound
from conftest import algo_config, plain_q

OBS, ACT, B, N = 3, 2, 5, 3


def make_agent(name="calql", **overrides):
    torch.manual_seed(0)
    cfg = algo_config(name, actor_hidden=[8, 8], critic_hidden=[8, 8], n_actions=N, **overrides)
    return CQL(OBS, ACT, cfg, torch.device("cpu"))


def make_batch(mc_scale=1.0):
    g = torch.Generator().manual_seed(1)
    return Batch(torch.randn(B, OBS, generator=g), torch.rand(B, ACT, generator=g) * 2 - 1,
                 torch.randn(B, generator=g), torch.randn(B, OBS, generator=g),
                 (torch.rand(B, generator=g) < 0.3).float(), torch.randn(B, generator=g) * mc_scale)


def plain_policy(actor, s, eps):
    mean, log_std = actor(s.unsqueeze(0))
    mean, std = mean[0], log_std[0].exp()
    u = mean + std * eps
    log_prob = torch.distributions.Normal(mean, std).log_prob(u).sum() - torch.log(1 - torch.tanh(u) ** 2).sum()
    return torch.tanh(u), log_prob


def plain_losses(agent, batch, noise, calibrate):
    cfg, gamma = agent.cfg, agent.cfg.gamma
    critic_loss, actor_loss = 0.0, 0.0
    for i in range(2):
        td, gap = 0.0, 0.0
        for b in range(B):
            s, a, s2 = batch.obs[b], batch.actions[b], batch.next_obs[b]
            backups = []
            for k in range(cfg.backup_actions):  # the max backup's own count (10 here, the regulariser's N is 3)
                a2, _ = plain_policy(agent.actor, s2, noise["eps_next"][b, N + k])
                backups.append(min(plain_q(agent.critic_target, j, s2, a2) for j in range(2)))
            target = batch.rewards[b] + gamma * (1 - batch.dones[b]) * max(backups)
            q_data = plain_q(agent.critic, i, s, a)
            td += (q_data - target) ** 2
            terms = []
            for k in range(N):
                terms.append(plain_q(agent.critic, i, s, noise["random_actions"][b, k]) - ACT * math.log(0.5))
            for state, eps in ((s2, noise["eps_next"][b, :N]), (s, noise["eps_current"][b])):
                for k in range(N):
                    a_pi, log_pi = plain_policy(agent.actor, state, eps[k])
                    q = plain_q(agent.critic, i, s, a_pi)  # scored at s, also for pi(.|s')
                    if calibrate:
                        q = torch.maximum(q, batch.v_ref[b])
                    terms.append(q - log_pi)
            gap += torch.log(sum(torch.exp(t) for t in terms)) - q_data
        critic_loss += td / B + cfg.cql_weight * gap / B
    alpha = agent.log_alpha.exp()
    for b in range(B):
        a_pi, log_pi = plain_policy(agent.actor, batch.obs[b], noise["eps_actor"][b, 0])
        actor_loss += (alpha * log_pi - min(plain_q(agent.critic, j, batch.obs[b], a_pi) for j in range(2))) / B
    return critic_loss, actor_loss


@pytest.mark.parametrize("calibrate", [False, True])
def test_update_matches_plain_formulation(calibrate):
    agent = make_agent(cql_weight=2.0, lagrange=False)  # the fixed weight (the Lagrange version: its own test)
    assert agent.cfg.backup_actions == 10 != N
    batch = make_batch(mc_scale=0.05)
    noise = agent.draw_noise(B)
    with torch.no_grad():
        agent.calibrate = calibrate
        _, metrics = agent.compute_losses(batch, noise)
        critic_loss, actor_loss = plain_losses(agent, batch, noise, calibrate)
    torch.testing.assert_close(metrics["critic_loss"], critic_loss.float(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(metrics["actor_loss"], actor_loss.float(), rtol=1e-5, atol=1e-5)
    if calibrate:
        assert 0.0 < metrics["calql_bound_rate"] < 1.0  # the test exercises both sides of the bound


def test_calql_bound_lifts_only_policy_values_below_the_reference():
    q_current = torch.tensor([[[-1.0, 2.0]]])
    q_next = torch.tensor([[[0.5, -3.0]]])
    v_ref = torch.tensor([[[0.0]]])
    cur, nxt, rate = calql_bound(q_current, q_next, v_ref)
    torch.testing.assert_close(cur, torch.tensor([[[0.0, 2.0]]]))
    torch.testing.assert_close(nxt, torch.tensor([[[0.5, 0.0]]]))
    assert rate.item() == pytest.approx(0.5)


def test_calql_and_cql_differ_only_in_the_bound():
    batch = make_batch()
    low = batch._replace(v_ref=torch.full((B,), -1e6))  # a bound nothing reaches
    high = batch._replace(v_ref=torch.full((B,), 1e3))  # a bound that lifts every policy value
    cql, calql = make_agent("cql"), make_agent("calql")
    for agent in (cql, calql):
        agent.begin_phase("offline")  # each agent reads its own calibration switch
    assert (cql.calibrate, calql.calibrate) == (False, True)
    noise = cql.draw_noise(B)
    with torch.no_grad():
        loss_cql, m_cql = cql.compute_losses(low, noise)
        loss_low, m_low = calql.compute_losses(low, noise)
        loss_high, m_high = calql.compute_losses(high, noise)
    torch.testing.assert_close(loss_cql, loss_low)
    assert m_low["calql_bound_rate"].item() == 0.0 and m_high["calql_bound_rate"].item() == 1.0
    # random-action and data Q-values are never bounded, and TD terms are unchanged; q_policy is the critic's own
    # Q(s, a ~ pi), before the bound lifted every one of them to 1e3
    for key in ("q_random", "q_data", "td_loss", "q_policy"):
        torch.testing.assert_close(m_high[key], m_cql[key])
    assert m_high["q_policy"].item() < 1e3
    assert m_high["cql_gap"] > m_cql["cql_gap"]


def test_lagrange_multiplier_and_update_step_run():
    agent = make_agent(lagrange=True, target_action_gap=0.8)
    batch = make_batch()
    before = [p.detach().clone() for p in agent.critic.parameters()]
    agent.begin_phase("online")
    metrics = agent.update(batch)
    assert "alpha_prime" in metrics and torch.isfinite(metrics["critic_loss"])
    assert any(not torch.equal(a, b) for a, b in zip(before, agent.critic.parameters()))
    assert agent.log_alpha_prime.grad is not None


def test_bf16_precision_runs_close_to_fp32():
    batch = make_batch()
    fp32 = make_agent()
    bf16 = make_agent()
    bf16.autocast_dtype = torch.bfloat16
    noise = fp32.draw_noise(B)
    with torch.no_grad():
        fp32.calibrate = bf16.calibrate = True
        _, m32 = fp32.compute_losses(batch, noise)
        _, m16 = bf16.compute_losses(batch, noise)
    torch.testing.assert_close(m16["critic_loss"], m32["critic_loss"], rtol=0.05, atol=0.05)


@pytest.mark.parametrize("algo, offline, online", [("calql", True, True), ("cql", False, False)])
def test_the_agent_reads_its_calibration_switch_per_phase(algo, offline, online):
    agent = make_agent(algo)
    agent.begin_phase("offline")
    assert agent.calibrate is offline
    agent.begin_phase("online")
    assert agent.calibrate is online
    # CQL with the switch on is Cal-QL offline, and nothing else has to pass a flag
    cql = make_agent("cql", calibrate_offline=True)
    cql.begin_phase("offline")
    assert cql.calibrate


def test_batch_v_ref_means_leave_out_rows_whose_v_ref_is_not_known_yet():
    """The step schedule stores a running episode's rows with V_ref NaN until it ends; the logged means are over
    the other rows, and a batch with none known gives NaN, which the divergence guard does not take for divergence."""
    from o2o import metrics as M
    from o2o.stages.common import RunContext

    agent = make_agent("cql")
    batch = make_batch()
    v_ref = torch.arange(B, dtype=torch.float32)
    v_ref[::2] = float("nan")
    q_data = torch.ones(2, B)
    m = agent.q_metrics(q_data, batch._replace(v_ref=v_ref))
    known = v_ref[1::2]
    assert m[M.V_REF].item() == pytest.approx(known.mean().item())
    assert m[M.Q_DATA_MINUS_V_REF].item() == pytest.approx((1.0 - known).mean().item())
    none = agent.q_metrics(q_data, batch._replace(v_ref=torch.full((B,), float("nan"))))
    assert math.isnan(none[M.V_REF].item())
    # a flush window averages the updates whose batch had known rows; one with none does not count
    from o2o.errors import Diverged
    from o2o.stages.common import MetricAverager

    averager = MetricAverager()
    for metrics in (none, m, none):
        averager.add(metrics)
    means = averager.pop_means()
    assert means[M.V_REF] == pytest.approx(m[M.V_REF].item())
    assert means[M.Q_DATA_MINUS_V_REF] == pytest.approx(m[M.Q_DATA_MINUS_V_REF].item())
    assert means[M.Q_DATA] == pytest.approx(1.0)  # q_data: every row, every update
    averager.add(none)
    assert math.isnan(averager.pop_means()[M.V_REF])  # a window that saw no known row: NaN, which is not logged
    ctx = type("Ctx", (), {"divergence_guard": True, "_what_now": lambda self: ""})()
    RunContext.check_finite_metrics(ctx, {M.V_REF: float("nan")}, "online", 1)  # online: not a divergence
    with pytest.raises(Diverged):  # offline every row's V_ref is known: NaN there is one
        RunContext.check_finite_metrics(ctx, {M.V_REF: float("nan")}, "offline", 1)
