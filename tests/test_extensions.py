"""The companion methods on hand-made cases: RND's bonus, the Q-conditioned k-NN estimate (qknn), learned reference values, and
offline retraining (OOO), which sees exactly the offline and online transitions, without the bonus, and resumes."""
import json
import math
import os
import signal
import subprocess
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import ROOT, SMOKE, algo_config, compose
from o2o import metrics as M
from o2o.buffers import Batch
from o2o.agents.cql import CQL
from o2o.buffers import TransitionBuffer
from o2o.config import validate
from o2o.errors import ConfigError
from o2o.exploration import RND, q_conditioned_entropy
from o2o.stages.common import Learner
from o2o.reference import LearnedReference
from o2o.returns import returns_to_go


def batch_of(obs, rewards=None):
    obs = torch.as_tensor(obs, dtype=torch.float32)
    n = len(obs)
    zeros = torch.zeros(n)
    return Batch(obs, torch.zeros(n, 2), zeros if rewards is None else rewards, obs, zeros, zeros)


# --------------------------------------------------------------------------- RND


def rnd_config(preset="rnd_trained", **over):
    cfg = validate(compose([f"exploration={preset}"])).exploration
    for k, v in over.items():
        setattr(cfg, k, v)
    return cfg


def train_step(rnd, batch):
    """What the learner does with RND on each batch: the bonus, then the predictor's step."""
    bonus = rnd.reward(batch)
    rnd.update(batch)
    return bonus


def test_rnd_bonus_shrinks_on_visited_states_and_stays_high_elsewhere():
    rng = np.random.default_rng(0)
    visited = rng.normal(0.0, 0.3, size=(256, 4))
    novel = rng.normal(0.0, 0.3, size=(256, 4)) + np.array([3.0, -3.0, 3.0, -3.0])
    rnd = RND(4, rnd_config(rnd_hidden=[64, 64], rnd_lr=1e-3, rnd_update_proportion=1.0), seed=0,
              device=torch.device("cpu"))
    for _ in range(5):  # the running observation statistics settle on the visited states first
        train_step(rnd, batch_of(visited))
    before_visited = rnd.error(torch.as_tensor(visited, dtype=torch.float32)).mean().item()
    for _ in range(300):
        train_step(rnd, batch_of(visited))
    after_visited = rnd.error(torch.as_tensor(visited, dtype=torch.float32)).mean().item()
    after_novel = rnd.error(torch.as_tensor(novel, dtype=torch.float32)).mean().item()
    assert after_visited < 0.2 * before_visited  # learnt where it has been
    assert after_novel > 5 * after_visited  # much less where it has not been


def test_the_rnd_bonus_is_the_error_over_its_running_std_and_trains_on_a_quarter_of_the_batch():
    rnd = RND(3, rnd_config(), seed=1, device=torch.device("cpu"))
    obs = torch.randn(400, 3)
    expected = rnd.error(obs) / rnd.bonus_rms.var.sqrt().float()
    before = [p.clone() for p in rnd.predictor.parameters()]
    bonus = train_step(rnd, batch_of(obs))
    assert torch.allclose(bonus, expected)  # computed before the predictor moves
    assert any(not torch.equal(a, b) for a, b in zip(before, rnd.predictor.parameters()))
    assert rnd.bonus_rms.count > 399 and rnd.obs_rms.count > 399


def test_the_bonus_statistics_follow_the_normalised_bonus_as_in_ooos_code():
    """rnd_net.py / conservative_sac.py: the reward statistics are updated with the bonus already divided by their
    std, so the next bonus is divided by the std of those."""
    from o2o.exploration import RunningMeanStd

    rnd = RND(3, rnd_config(), seed=1, device=torch.device("cpu"))
    first, second = torch.randn(300, 3), torch.randn(300, 3) + 1.0
    b1 = train_step(rnd, batch_of(first))
    stats = RunningMeanStd(())
    stats.update(b1)  # the normalised bonus (the initial std is 1)
    assert rnd.bonus_rms.var.item() == pytest.approx(stats.var.item())
    expected = rnd.error(second) / stats.var.sqrt().float()
    assert torch.allclose(train_step(rnd, batch_of(second)), expected)


def test_ooos_published_bonus_is_the_initial_predictors_error_on_clipped_states_and_never_moves():
    """exploration=rnd: OOO's jitted step scores with its trace-time (initial) predictor and statistics."""
    rnd = RND(4, rnd_config("rnd"), seed=3, device=torch.device("cpu"))
    states = torch.randn(200, 4) * 4.0  # some beyond [-5, 5]
    with torch.no_grad():
        x = states.clamp(-5.0, 5.0)  # the initial statistics: mean 0, variance 1
        direct = (rnd.predictor(x) - rnd.target(x)).pow(2).amax(dim=1)  # / sqrt(1)
    before = [p.clone() for p in rnd.predictor.parameters()]
    first = train_step(rnd, batch_of(states))
    for _ in range(20):
        later = train_step(rnd, batch_of(states))
    torch.testing.assert_close(first, direct)
    torch.testing.assert_close(later, direct)
    assert all(torch.equal(a, b) for a, b in zip(before, rnd.predictor.parameters()))


def test_rnd_networks_start_as_ooos_orthogonal_init():
    rnd = RND(5, rnd_config(rnd_hidden=[64, 64]), seed=0, device=torch.device("cpu"))
    linears = [m for m in rnd.predictor if isinstance(m, torch.nn.Linear)]
    hidden, output = linears[0].weight, linears[-1].weight  # (64, 5) and (64, 64)
    torch.testing.assert_close(hidden.T @ hidden, 2.0 * torch.eye(5), atol=1e-5, rtol=0)  # gain sqrt(2)
    torch.testing.assert_close(output @ output.T, 1e-4 * torch.eye(64), atol=1e-7, rtol=0)  # gain 1e-2
    assert all(torch.count_nonzero(m.bias) == 0 for m in linears)


def test_the_learner_adds_coef_times_bonus_and_reports_it():
    class Bonus:
        def __init__(self):
            self.updated = []

        def reward(self, batch, agent):
            return torch.tensor([0.0, 1.0, 2.0, 3.0])

        def update(self, batch):
            self.updated.append(batch)

    class Agent:
        def update(self, batch):
            self.batch = batch
            return {}

    sampled = batch_of(torch.zeros(4, 2), rewards=torch.tensor([1.0, 2.0, 3.0, 4.0]))
    agent, bonus = Agent(), Bonus()
    metrics = Learner(agent, lambda: sampled, bonus, 0.5).update()
    batch = agent.batch
    assert batch.rewards.tolist() == [1.0, 2.5, 4.0, 5.5]
    assert metrics["intrinsic_reward_mean"].item() == pytest.approx(0.75)
    assert metrics["intrinsic_reward_max"].item() == pytest.approx(1.5)
    assert len(bonus.updated) == 1 and bonus.updated[0] is sampled  # the bonus's own model trains on the batch it scored, with the task reward


# --------------------------------------------------------------------------- QKNN (after SERA's idea)


def test_knn_entropy_on_evenly_spaced_points():
    states = torch.arange(6, dtype=torch.float32)[:, None]  # 0, 1, ..., 5 on a line
    same_value = torch.zeros(6)
    # k = 1: every point's nearest neighbour is 1 away
    assert torch.allclose(q_conditioned_entropy(states, same_value, 1), torch.full((6,), math.log(2.0)))
    # k = 2: interior points have two neighbours at 1, the ends' second one is 2 away
    expected = torch.tensor([math.log(3.0), *[math.log(2.0)] * 4, math.log(3.0)])
    assert torch.allclose(q_conditioned_entropy(states, same_value, 2), expected)


def test_knn_entropy_is_conditioned_on_the_value():
    # two interleaved sets on a line, 1 apart, with very different values: a state's neighbours are the states of
    # its own value, 2 away, not the closer ones of the other value
    states = torch.arange(8, dtype=torch.float32)[:, None]
    values = torch.tensor([0.0, 100.0] * 4)
    assert torch.allclose(q_conditioned_entropy(states, values, 1), torch.full((8,), math.log(3.0)))
    # with equal values the closer states are the neighbours again
    assert torch.allclose(q_conditioned_entropy(states, torch.zeros(8), 1), torch.full((8,), math.log(2.0)))


# --------------------------------------------------------------------------- learned reference values


def chain_data(episodes=40, horizon=30, gamma=0.9):
    """Episodes walking a line from a random start to its end: reward -1 per step, 0 at the terminal step; the
    observation is the distance to the end, so V(s) is a function of it."""
    rng = np.random.default_rng(0)
    obs, next_obs, rewards, dones, ends = [], [], [], [], []
    for _ in range(episodes):
        start = rng.integers(5, horizon)
        for left in range(start, 0, -1):
            obs.append([left / horizon])
            next_obs.append([(left - 1) / horizon])
            rewards.append(0.0 if left == 1 else -1.0)
            dones.append(float(left == 1))
            ends.append(left == 1)
    rewards, ends = np.array(rewards, np.float32), np.array(ends)
    mc = returns_to_go(rewards, ends, gamma)
    t = lambda x: torch.as_tensor(np.asarray(x, np.float32))  # noqa: E731
    return t(obs), t(rewards), t(next_obs), t(dones), t(mc)


@pytest.mark.parametrize("source, tolerance", [("regression", 0.03), ("td", 0.05)])
def test_a_learned_reference_recovers_the_monte_carlo_returns(source, tolerance):
    """Within ``tolerance`` of the returns' range, on average, after the configured number of fit steps."""
    gamma = 0.9
    obs, rewards, next_obs, dones, mc = chain_data(gamma=gamma)
    cfg = validate(compose([f"reference={source}"])).reference
    cfg.fit_steps = 3000  # the toy chain needs fewer than the default
    reference = LearnedReference(1, cfg, gamma, seed=0, device=torch.device("cpu"))
    logged = []
    errors = reference.fit(obs, rewards, next_obs, dones, mc, log=lambda m, step: logged.append(step))
    spread = (mc.max() - mc.min()).item()
    assert errors["v_ref_mae"] < tolerance * spread, errors
    assert errors["v_ref_corr"] > 0.99
    assert errors["v_ref_mae"] == pytest.approx((reference(obs) - mc).abs().mean().item(), rel=1e-5)
    assert logged[-1] == 3000 and len(logged) == 20
    again = LearnedReference(1, cfg, gamma, seed=0, device=torch.device("cpu"))
    again.fit(obs, rewards, next_obs, dones, mc)
    assert torch.equal(again(obs), reference(obs))  # seeded: a resumed run fits the same function


def test_learned_reference_and_exploration_options_are_checked():
    for overrides, message in ((["exploration=qknn"], "exploration.coef"),
                               (["exploration=sera"], "could not be traced to its paper"),
                               (["exploration=rnd", "schedule.online_steps=0"], "fine-tuning"),
                               (["retrain=ooo", "schedule.online_steps=0"], "online_steps > 0"),
                               (["reference=td", "reference.target_rate=0"], "target_rate"),
                               (["retrain=ooo", "retrain.mixing_ratio=2"], "retrain.mixing_ratio")):
        with pytest.raises(ConfigError, match=message):
            validate(compose(overrides))
    cfg = validate(compose(["retrain=ooo", "exploration=qknn", "exploration.coef=1.0"]))
    assert cfg.exploration.knn_k == 3
    retrain = cfg.retrain  # conservative_sac_exploitation.py and the exploitation commands of ooo_for_calql_scripts.md
    # their commands pass --cql.feature_normalization=True, but the exploitation script's Q-function never reads it
    assert (retrain.steps, retrain.algorithm, retrain.clip_targets, retrain.feature_normalization) == (
        1_000_000, "cql", True, False)
    assert retrain.eval_episodes == 100 and retrain.mixing_ratio == cfg.algo.mixing_ratio
    with pytest.raises(ConfigError, match="retrain=ooo retrains with CQL, as OOO does"):
        validate(compose(["algo=iql", "retrain=ooo"]))
    iql = validate(compose(["algo=iql", "retrain=same"]))  # the run's own algorithm and pre-training's budget
    same = iql.retrain
    assert (same.algorithm, same.clip_targets, same.feature_normalization) == ("run", False, False)
    assert same.steps == iql.schedule.offline_steps and same.eval_episodes == iql.domain.eval_episodes


def test_ooo_retrains_cal_ql_runs_with_cql_on_normalised_features_and_bounded_targets():
    from o2o.pipeline import retraining_config

    cfg = validate(compose(["algo=calql", "retrain=ooo"]))
    assert cfg.algo.calibrate_offline and not retraining_config(cfg).algo.calibrate_offline
    assert validate(compose(["algo=calql", "retrain=same"])) == retraining_config(
        validate(compose(["algo=calql", "retrain=same"])))
    torch.manual_seed(0)
    agent = CQL(3, 2, algo_config("cql", critic_hidden=[8, 8], actor_hidden=[8], gamma=0.9), torch.device("cpu"))
    obs, actions = torch.randn(5, 3), torch.rand(5, 1, 2) * 2 - 1
    plain = []
    with torch.no_grad():
        for member in range(2):  # OOO's FullyConnectedNetwork: the last hidden activations divided by their norm
            x = torch.relu(torch.cat([obs, actions[:, 0]], 1) @ agent.critic.weights[0][member] + agent.critic.biases[0][member])
            x = torch.relu(x @ agent.critic.weights[1][member] + agent.critic.biases[1][member])
            x = x / x.norm(dim=-1, keepdim=True).clamp(min=1e-8)
            plain.append((x @ agent.critic.weights[2][member] + agent.critic.biases[2][member])[:, 0])
        agent.critic.normalize_features = True
        torch.testing.assert_close(agent.critic(obs, actions)[..., 0], torch.stack(plain))
        batch = Batch(obs, actions[:, 0], torch.zeros(5), obs, torch.zeros(5), torch.zeros(5))
        noise = agent.draw_noise(5)
        from o2o.agents.networks import TanhGaussianActor

        nxt, logp = TanhGaussianActor.sample(*agent.actor(obs), noise["eps_next"][:, agent.cfg.n_actions:])
        free = agent._td_target(batch, nxt, logp, noise)
        agent.target_bounds = (float(free.min()) / 0.9 + 1e-3, float(free.max()) / 0.9 - 1e-3)  # binds at both ends
        bounded = agent._td_target(batch, nxt, logp, noise)
    torch.testing.assert_close(bounded, 0.9 * (free / 0.9).clamp(*agent.target_bounds))


# --------------------------------------------------------------------------- offline retraining


def test_retraining_samples_exactly_the_offline_and_online_transitions_without_a_bonus(monkeypatch):
    from o2o.stages import retrain as retrain_module

    rng = np.random.default_rng(0)

    def filled(n, offset):
        buffer = TransitionBuffer(n, 3, 2, torch.device("cpu"))
        buffer.add(rng.normal(size=(n, 3)) + offset, rng.uniform(-1, 1, (n, 2)), rng.normal(size=n) + offset,
                   rng.normal(size=(n, 3)), np.zeros(n), rng.normal(size=n))
        return buffer

    offline, online = filled(300, 0.0), filled(100, 50.0)
    seen = []

    def fake_pretrain(agent, learner, steps, ctx, phase):
        assert phase == M.RETRAIN and learner.bonus is None
        sample = learner.sample
        for _ in range(steps):
            seen.append(torch.cat([torch.cat([b.obs, b.actions, b.rewards[:, None], b.next_obs, b.dones[:, None],
                                              b.v_ref[:, None]], 1) for b in [sample()]]))
        return {}

    monkeypatch.setattr(retrain_module, "pretrain", fake_pretrain)
    cfg = SimpleNamespace(seed=0, algo=SimpleNamespace(name="cql", gamma=0.99), buffer=SimpleNamespace(batch_size=64),
                          retrain=SimpleNamespace(steps=50, mixing_ratio=-1.0, algorithm="cql", with_cql=True, clip_targets=True,
                                                  feature_normalization=True, eval_episodes=7, upsample_batch=0,
                                                  reward_bias=None, terminal_reward=None))
    agent = CQL(3, 2, algo_config("cql", critic_hidden=[8], actor_hidden=[8]), torch.device("cpu"))
    state = SimpleNamespace(stage="online", online=SimpleNamespace(buffer=None), retrain=None)
    ctx = SimpleNamespace(state=state, evaluator=SimpleNamespace(episodes=2))
    real_fake = fake_pretrain

    def fake_pretrain(agent, learner, steps, ctx, phase):  # noqa: F811  the retrained agent is scored on 7 episodes
        assert ctx.evaluator.episodes == 7
        return real_fake(agent, learner, steps, ctx, phase)

    monkeypatch.setattr(retrain_module, "pretrain", fake_pretrain)
    _, fresh = retrain_module.retrain(agent, lambda: CQL(3, 2, algo_config("cql", critic_hidden=[8], actor_hidden=[8]),
                                                         torch.device("cpu")), offline, online, cfg, ctx, {})
    rows = torch.cat(seen)
    known = torch.cat([offline.storage[:300], online.storage[:100]])
    match = (rows[:, None, :] == known[None, :, :]).all(-1)
    assert match.any(1).all()  # every sampled row is a stored transition, rewards untouched (no bonus)
    from_online = match[:, 300:].any(1).float().mean().item()
    assert from_online == pytest.approx(100 / 400, abs=0.03)  # uniform over all of it (mixing ratio -1)
    rewards = torch.cat([offline.storage[:300, 5], online.storage[:100, 5]])
    assert fresh.target_bounds == pytest.approx((float(rewards.min()) / 0.01, float(rewards.max()) / 0.01))  # data range
    assert fresh.critic.normalize_features and fresh.critic_target.normalize_features and ctx.evaluator.episodes == 2
    assert state.finetuned_agent["grad_steps"] == agent.grad_steps and state.online.buffer["rows"].shape[0] == 100
    assert fresh is not agent


@pytest.mark.parametrize("overrides, expected", [
    # (exploration coef, target bounds, terminal reward, algo reward bias, retrain upsample, bias, terminal reward):
    # OOO's commands (ooo_for_calql_scripts.md), maze2d's on PointMaze
    (["env=pointmaze_umaze"], (10.0, [-5.0, 6.0], None, -5.0, 32, None, None)),
    (["env=kitchen_mixed"], (10.0, [None, 0.5], 0.0, -5.0, 0, -4.0, 0.0)),
    (["env=adroit_door"], (0.5, None, None, 5.0, 0, None, None)),
    (["env=antmaze_umaze"], (50.0, None, None, -5.0, 0, None, None)),
    (["env=halfcheetah"], (1.0, None, None, 0.0, 0, None, None)),  # no OOO command: their code's defaults
])
@pytest.mark.parametrize("algo", ["cql", "calql"])
def test_ooo_takes_its_commands_values_for_each_domain(overrides, expected, algo):
    cfg = validate(compose([*overrides, f"algo={algo}", "companion=ooo"]))
    e, r = cfg.exploration, cfg.retrain
    assert (e.coef, e.target_bounds, e.terminal_reward, cfg.algo.reward_bias, r.upsample_batch, r.reward_bias,
            r.terminal_reward) == expected
    trained = validate(compose([*overrides, f"algo={algo}", "exploration=rnd_trained"])).exploration
    assert (trained.coef, trained.target_bounds, trained.terminal_reward) == expected[:3]
    from o2o.pipeline import retraining_config

    kitchen = "env=kitchen_mixed" in overrides  # its exploitation command keeps 4M transitions, IS off as exploring
    assert retraining_config(cfg).algo.importance_sampling == cfg.algo.importance_sampling == (not kitchen)
    assert (cfg.buffer.online_capacity == cfg.schedule.online_steps) if kitchen else cfg.buffer.online_capacity == 1000000


def test_the_exploring_runs_values_are_cql_and_cal_qls_only():
    plain = validate(compose(["env=kitchen_mixed", "algo=iql"])).algo.reward_bias
    iql = validate(compose(["env=kitchen_mixed", "algo=iql", "exploration=rnd"]))  # OOO's values are their CQL code's
    assert (iql.exploration.coef, iql.exploration.target_bounds, iql.algo.reward_bias) == (1.0, None, plain)
    with pytest.raises(ConfigError, match="exploration.target_bounds bounds CQL's TD target; iql has none"):
        validate(compose(["algo=iql", "exploration=rnd", "exploration.target_bounds=[0,1]"]))
    with pytest.raises(ConfigError, match=r"exploration.target_bounds must be \[min, max\]"):
        validate(compose(["exploration=rnd", "exploration.target_bounds=[1,0]"]))
    with pytest.raises(ConfigError, match="retrain.reward_bias relabels the rewards of a CQL retraining"):
        validate(compose(["retrain=same", "retrain.reward_bias=-4"]))


def test_target_bounds_are_the_rewards_over_one_minus_gamma_widened_by_the_online_rewards():
    from o2o.stages.common import target_bounds, widened

    assert target_bounds(None, 0.9) is None
    assert target_bounds([-5.0, 6.0], 0.9) == pytest.approx((-50.0, 60.0))
    assert widened([-5.0, 6.0], np.array([-1.0, 2.0])) == [-5.0, 6.0]  # inside
    assert widened([-5.0, 6.0], np.array([-7.0, 8.0])) == [-7.0, 8.0]  # widened
    assert widened([None, 0.5], np.array([-7.0, 1.0])) == [None, 1.0]  # an open side stays open
    assert target_bounds([None, 1.0], 0.9) == pytest.approx((-math.inf, 10.0))


def test_the_exploring_agent_is_bounded_from_pre_training_and_widened_by_each_online_episode():
    from o2o.run_state import OnlineProgress, RunState
    from o2o.stages.online import bound_exploring_targets

    cfg = validate(compose(["algo=cql", "exploration=rnd", "exploration.target_bounds=[-5,6]", "algo.gamma=0.9"]))
    agent = CQL(3, 2, algo_config("cql", critic_hidden=[8], actor_hidden=[8], gamma=0.9), torch.device("cpu"))
    bound_exploring_targets(agent, cfg)  # pre-training: the command's bounds
    assert agent.target_bounds == pytest.approx((-50.0, 60.0))
    progress = OnlineProgress()
    bound_exploring_targets(agent, cfg, progress)  # fine-tuning's start
    assert agent.target_bounds == pytest.approx((-50.0, 60.0)) and progress.reward_range == [-5.0, 6.0]
    bound_exploring_targets(agent, cfg, progress, np.array([-9.0, 1.0]))  # an episode below the lower bound widens it
    assert agent.target_bounds == pytest.approx((-90.0, 60.0))
    bound_exploring_targets(agent, cfg, progress, np.array([0.0]))  # a later one inside: never narrowed again
    assert agent.target_bounds == pytest.approx((-90.0, 60.0))
    resumed = RunState.from_dict(RunState(config={}, run_id="r", online=progress).to_dict()).online  # a checkpoint
    fresh = CQL(3, 2, algo_config("cql", critic_hidden=[8], actor_hidden=[8], gamma=0.9), torch.device("cpu"))
    bound_exploring_targets(fresh, cfg, resumed)  # the resumed run starts from the widened range
    assert fresh.target_bounds == pytest.approx((-90.0, 60.0))
    unbounded = CQL(3, 2, algo_config("cql", critic_hidden=[8], actor_hidden=[8]), torch.device("cpu"))
    bound_exploring_targets(unbounded, validate(compose(["algo=cql"])), OnlineProgress(), np.array([-9.0]))
    assert unbounded.target_bounds is None


def test_kitchen_batches_are_terminal_exactly_where_the_reward_is_zero():
    from o2o.stages.common import Learner, relabelled

    rewards = torch.tensor([-4.0, 0.0, -1.0, 0.0])
    batch = batch_of(torch.zeros(4, 3), rewards)._replace(dones=torch.tensor([1.0, 0.0, 0.0, 0.0]))
    assert relabelled(lambda: batch) is not None and relabelled(lambda: batch)() is batch  # no rule: as sampled
    ruled = relabelled(lambda: batch, terminal_reward=0.0)()
    assert ruled.dones.tolist() == [0.0, 1.0, 0.0, 1.0] and torch.equal(ruled.rewards, rewards)
    shifted = relabelled(lambda: batch, 1.0, 0.0)()  # retraining: -5 -> -4, then the rule on the new rewards
    assert shifted.rewards.tolist() == [-3.0, 1.0, 0.0, 1.0] and shifted.dones.tolist() == [0.0, 0.0, 1.0, 0.0]
    seen = []
    agent = SimpleNamespace(update=lambda b: seen.append(b) or {})
    Learner(agent, relabelled(lambda: batch, terminal_reward=0.0)).update()  # the learner trains on the rule's batch
    assert seen[0].dones.tolist() == [0.0, 1.0, 0.0, 1.0]


def test_ooos_retraining_upsamples_the_best_online_transitions_and_relabels_kitchen():
    from o2o.stages.retrain import prepare, retraining_batches

    offline = TransitionBuffer(50, 3, 2, torch.device("cpu"))
    offline.add(np.zeros((50, 3)), np.zeros((50, 2)), np.full(50, -5.0), np.zeros((50, 3)), np.zeros(50), np.zeros(50))
    online = TransitionBuffer(20, 3, 2, torch.device("cpu"))
    rewards = np.array([-5.0] * 17 + [-1.0] * 3)  # the buffer's best reward, three times
    online.add(np.arange(20)[:, None].repeat(3, 1), np.zeros((20, 2)), rewards, np.zeros((20, 3)), np.zeros(20), np.zeros(20))

    def config(**retrain):
        base = dict(mixing_ratio=0.5, upsample_batch=0, reward_bias=None, terminal_reward=None, clip_targets=True,
                    feature_normalization=False)
        return SimpleNamespace(algo=SimpleNamespace(reward_bias=-5.0, gamma=0.9), buffer=SimpleNamespace(batch_size=16),
                               retrain=SimpleNamespace(**{**base, **retrain}))

    torch.manual_seed(0)
    batch = retraining_batches(offline, online, config(upsample_batch=32))()
    assert len(batch.rewards) == 16 + 32 and (batch.rewards[16:] == -1.0).all()  # 32 more, all at the best reward
    assert set(batch.obs[16:, 0].tolist()) == {17.0, 18.0, 19.0}
    assert len(retraining_batches(offline, online, config())().rewards) == 16  # no upsampling: the batch as mixed
    kitchen = config(reward_bias=-4.0, terminal_reward=0.0)  # explored at -5, retrained at -4
    batch = retraining_batches(offline, online, kitchen)()
    assert set(batch.rewards.tolist()) <= {-4.0, 0.0} and torch.equal(batch.dones, (batch.rewards == 0).float())
    both = retraining_batches(offline, online, config(reward_bias=-4.0, terminal_reward=0.0, upsample_batch=8))()
    assert (both.rewards[16:] == 0.0).all() and (both.dones[16:] == 1.0).all()  # upsampled rows relabelled too
    agent = CQL(3, 2, algo_config("cql", critic_hidden=[8], actor_hidden=[8]), torch.device("cpu"))
    prepare(agent, kitchen, offline, online)  # the bound is on the relabelled rewards
    assert agent.target_bounds == pytest.approx((-40.0, 0.0))


def test_the_target_bound_acts_on_the_highest_q_before_its_entropy_as_the_authors_order_them():
    """nakamotoo/Cal-QL (and OOO's fork) conservative_sac.py: with max-target backup the a' of the highest target Q,
    then OOO's bound on that Q, then the entropy of that same a'."""
    from o2o.agents.networks import TanhGaussianActor

    torch.manual_seed(0)
    agent = CQL(3, 2, algo_config("cql", critic_hidden=[8], actor_hidden=[8], gamma=0.9, backup_entropy=True,
                                  max_target_backup=True), torch.device("cpu"))
    obs = torch.randn(6, 3)
    batch = Batch(obs, torch.zeros(6, 2), torch.zeros(6), obs, torch.zeros(6), torch.zeros(6))
    noise = agent.draw_noise(6)
    with torch.no_grad():
        nxt, logp = TanhGaussianActor.sample(*agent.actor(obs), noise["eps_next"][:, agent.cfg.n_actions:])
        q = agent.target_min(agent.critic_target(obs, nxt), noise)
        best = q.argmax(1, keepdim=True)
        agent.target_bounds = (float(q.max(1).values.median()), math.inf)  # binds on some states
        got = agent._td_target(batch, nxt, logp, noise)
    alpha = agent.alpha.detach()
    want = 0.9 * (q.gather(1, best)[:, 0].clamp(min=agent.target_bounds[0]) - alpha * logp.gather(1, best)[:, 0])
    torch.testing.assert_close(got, want)


def test_a_run_bounds_and_relabels_the_exploring_agents_batches_in_pre_training_and_fine_tuning(tmp_path, monkeypatch):
    """Through ``o2o.run``: every update of both phases sees the bound and the terminal rule's batches (a terminal
    reward that never occurs: no batch the agent gets has a terminal, though the sampled data has)."""
    from o2o.buffers import MixedSampler

    seen, raw = [], []
    update, sample, mixed = CQL.update, TransitionBuffer.sample, MixedSampler.sample
    monkeypatch.setattr(CQL, "update", lambda self, batch: (
        seen.append((self.target_bounds, float(batch.dones.sum()), len(batch.dones))), update(self, batch))[1])
    monkeypatch.setattr(TransitionBuffer, "sample", lambda self, n: (lambda b: (raw.append(float(b.dones.sum())), b)[1])(
        sample(self, n)))
    monkeypatch.setattr(MixedSampler, "sample", lambda self: (lambda b: (raw.append(float(b.dones.sum())), b)[1])(
        mixed(self)))
    from o2o import run

    run(algo="cql", run_dir=str(tmp_path), overrides=[*SMOKE, "schedule.offline_steps=60", "schedule.online_steps=120",
        "exploration=rnd", "exploration.target_bounds=[-5,6]", "exploration.terminal_reward=12345", "progress=false",
        "mlflow.system_metrics=false", "mlflow.log_models=false", "domain.eval_episodes=1", "algo.gamma=0.9",
        "mlflow_experiment=o2o-bounds"])
    assert len(seen) > 60 and sum(raw) > 0  # both phases updated; the data sampled holds terminals
    assert all(bounds == pytest.approx((-50.0, 60.0)) for bounds, _, _ in seen)  # rewards 10r - 5 never widen it
    assert all(dones == 0 for _, dones, _ in seen)  # the rule's batches, not the sampled ones


RESUMABLE = [*SMOKE, "mlflow_experiment=o2o-extensions", "schedule.offline_steps=100", "schedule.online_steps=300",
             "schedule.checkpoint_interval=50", "schedule.log_interval=10", "schedule.eval_interval_offline=50",
             "schedule.eval_interval_online=150", "domain.eval_episodes=1", "progress=false", "exploration=rnd",
             "retrain=ooo", "retrain.steps=100", "retrain.eval_episodes=1", "reference=regression",
             "reference.fit_steps=100", "mlflow.system_metrics=false"]


def command(run_dir):
    return [os.sys.executable, str(ROOT / "src" / "main.py"), *RESUMABLE, f"hydra.run.dir={run_dir}"]


def finish(run_dir):
    proc = subprocess.run(command(run_dir), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = torch.load(run_dir / "checkpoints" / "final.pt", weights_only=False)
    return {k: v for k, v in final["final"].items() if "updates_per_second" not in k}, final


@pytest.fixture(scope="module")
def extended_run(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("extended")
    return run_dir, *finish(run_dir)


def test_a_run_with_every_extension_logs_them(extended_run):
    run_dir, summary, final = extended_run
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run = client.get_run((run_dir / "mlflow_run_id").read_text().strip())
    metrics = run.data.metrics
    for key in M.REFERENCE_KEYS[:3]:  # the correlation is undefined (not logged) while the fit is still flat
        assert M.reference(M.OFFLINE, key) in metrics and M.reference(M.ONLINE, key) in metrics
    assert M.reference(M.OFFLINE, "fit_loss") in metrics
    for key in M.INTRINSIC_KEYS:
        assert M.train(M.ONLINE, key) in metrics
    retrain_evals = [m.step for m in client.get_metric_history(run.info.run_id, M.evaluation(M.RETRAIN, M.SUCCESS_RATE))]
    assert retrain_evals == [0, 50, 100]
    assert M.summary(M.RETRAIN, M.SUCCESS_RATE) in summary and M.summary(M.ONLINE, M.SUCCESS_RATE) in summary
    assert final["retrained_agent"]["grad_steps"] == 100  # a fresh agent: its own 100 steps
    assert final["agent"]["grad_steps"] > 100  # the fine-tuned one, pre-training and fine-tuning
    from o2o.policy_model import RETRAINED_POLICY, logged_model_names
    assert RETRAINED_POLICY in logged_model_names(client, run.info.run_id)


def test_killed_while_retraining_the_rerun_equals_the_uninterrupted_run(extended_run, tmp_path):
    _, uninterrupted, _ = extended_run
    proc = subprocess.Popen(command(tmp_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        try:
            stage = json.loads((tmp_path / "checkpoints" / "progress.json").read_text())["stage"]
        except (FileNotFoundError, json.JSONDecodeError):
            stage = None
        if stage == "retrain":
            proc.send_signal(signal.SIGKILL)
            break
        time.sleep(0.02)
    proc.communicate(timeout=300)
    assert proc.returncode == -signal.SIGKILL, "the run ended before it could be killed while retraining"
    resumed, _ = finish(tmp_path)
    assert resumed == uninterrupted


def test_retraining_at_intervals_scores_the_data_so_far_and_leaves_fine_tuning_as_it_was(tmp_path):
    """``retrain.interval``: retrained scores at those env steps, and the fine-tuned run unchanged by them."""
    base = [*SMOKE, "mlflow_experiment=o2o-intervals", "schedule.online_steps=300", "progress=false",
            "mlflow.system_metrics=false", "mlflow.log_models=false", "domain.eval_episodes=1"]
    from o2o.cli import run

    plain = run(overrides=base, run_dir=str(tmp_path / "plain"))
    every = run(overrides=[*base, "retrain=ooo", "retrain.steps=20", "retrain.interval=100", "retrain.eval_episodes=1"],
                run_dir=str(tmp_path / "every"))
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run_id = (tmp_path / "every" / "mlflow_run_id").read_text().strip()
    steps = [m.step for m in client.get_metric_history(run_id, M.evaluation(M.ONLINE_RETRAINED, M.SUCCESS_RATE))]
    ends = [m.step for m in client.get_metric_history(run_id, M.EPISODES)]  # env steps at which episodes ended
    expected = sorted({min(e for e in ends if e >= k) for k in range(100, 301, 100) if any(e >= k for e in ends)})
    assert steps == expected  # at the first episode end past each multiple of 100, once
    for key in (M.summary(M.ONLINE, M.SUCCESS_RATE), M.CUMULATIVE_REGRET, M.EPISODES):
        assert every[key] == plain[key]  # the retrainings ran on forked random streams


@pytest.mark.parametrize("algo, bonus", [("cql", "qknn"), ("iql", "rnd"), ("iql", "qknn"), ("sac", "rnd"),
                                         ("sac", "qknn")])
def test_every_algorithm_fine_tunes_with_either_intrinsic_reward(algo, bonus, tmp_path):
    from o2o.cli import run

    final = run(algo=algo, overrides=[*SMOKE, f"exploration={bonus}", "exploration.coef=1.0", "progress=false",
                                      "mlflow_experiment=o2o-bonus", "mlflow.log_models=false",
                                      "mlflow.system_metrics=false"], run_dir=str(tmp_path))
    assert M.summary(M.ONLINE, M.SUCCESS_RATE) in final
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run_id = (tmp_path / "mlflow_run_id").read_text().strip()
    means = client.get_metric_history(run_id, M.train(M.ONLINE, "intrinsic_reward_mean"))
    assert means and all(math.isfinite(m.value) for m in means)
    # OOO's RND acts from the first pre-training step; qknn on fine-tuning only
    offline = client.get_metric_history(run_id, M.train(M.OFFLINE, "intrinsic_reward_mean"))
    assert bool(offline) == (bonus == "rnd" and algo != "sac")
