import numpy as np
import pytest

from conftest import compose
from o2o.config import validate
from o2o.returns import returns_to_go


def test_discounting_within_one_episode():
    g = returns_to_go(np.array([1.0, 2.0, 3.0]), np.array([False, False, True]), gamma=0.5)
    np.testing.assert_allclose(g, [1 + 0.5 * 2 + 0.25 * 3, 2 + 0.5 * 3, 3])


def test_terminals_and_timeouts_split_episodes():
    rewards = np.array([1.0, 1.0, 1.0, 1.0, 1.0])
    ends = np.array([False, True, False, False, True])  # a terminal after step 1, a timeout after step 4
    g = returns_to_go(rewards, ends, gamma=0.9)
    np.testing.assert_allclose(g, [1.9, 1.0, 1 + 0.9 + 0.81, 1.9, 1.0], rtol=1e-6)


def test_unterminated_tail_is_its_own_episode():
    g = returns_to_go(np.array([1.0, 1.0, 2.0]), np.array([True, False, False]), gamma=0.5)
    np.testing.assert_allclose(g, [1.0, 2.0, 2.0])


def test_sparse_failure_rule_applies_only_to_all_failure_episodes():
    fail = -5.0
    rewards = np.array([-5.0, -5.0, -5.0, -5.0, 5.0])
    ends = np.array([False, True, False, False, True])
    g = returns_to_go(rewards, ends, gamma=0.99, fail_reward=fail)
    np.testing.assert_allclose(g[:2], [-500.0, -500.0], rtol=1e-6)  # never succeeded: r_fail / (1 - gamma)
    np.testing.assert_allclose(g[2:], [-5 - 0.99 * 5 + 0.99**2 * 5, -5 + 0.99 * 5, 5.0], rtol=1e-6)


def test_reward_transform_comes_before_returns():
    from conftest import algo_config
    from o2o.returns import transform_reward

    cfg = algo_config("calql", reward_scale=10.0, reward_bias=-5.0)
    raw = np.array([0.0, 0.0, 1.0])
    g = returns_to_go(transform_reward(raw, cfg), np.array([False, False, True]), 0.5,
                      fail_reward=transform_reward(0.0, cfg))
    np.testing.assert_allclose(g, [-5 + 0.5 * -5 + 0.25 * 5, -5 + 0.5 * 5, 5])


@pytest.mark.parametrize("n", [1_000_000])
def test_a_million_transitions_take_seconds(n):
    import time

    rng = np.random.default_rng(0)
    ends = rng.random(n) < 1 / 1000
    start = time.perf_counter()
    g = returns_to_go(rng.normal(size=n).astype(np.float32), ends, 0.99, fail_reward=-5.0)
    assert time.perf_counter() - start < 10.0
    assert g.shape == (n,) and np.isfinite(g).all()


def authors_return_to_go(rewards, terminals, gamma, infinite_horizon):
    """nakamotoo/Cal-QL (kitchen branch) JaxCQL/replay_buffer.py calc_return_to_go, dense branch, as written there."""
    out, prev = [0.0] * len(rewards), (rewards[-1] / (1 - gamma) if infinite_horizon else 0.0)
    for i in range(len(rewards)):
        out[-i - 1] = rewards[-i - 1] + gamma * prev * (1 - terminals[-i - 1])
        prev = out[-i - 1]
    return np.array(out, dtype=np.float32)


def test_kitchen_returns_carry_the_authors_tail_offline_and_online():
    from o2o.returns import label_rewards, reference_returns

    cfg = validate(compose(["env=kitchen_partial", "algo=calql"]))
    assert cfg.domain.infinite_horizon
    raw = np.array([0.0, 1.0, 1.0, 2.0, 2.0, 1.0, 3.0], np.float32)  # two episodes: 4 steps, then 3
    ends = np.array([0, 0, 0, 1, 0, 0, 1], bool)
    terminals = np.zeros(7, bool)
    rewards, g = label_rewards(raw, ends, cfg.domain, cfg.algo, terminals)
    gamma = cfg.algo.gamma
    expected = np.concatenate([authors_return_to_go(rewards[:4], terminals[:4], gamma, True),
                               authors_return_to_go(rewards[4:], terminals[4:], gamma, True)])
    np.testing.assert_allclose(g, expected, rtol=1e-5)
    assert g[3] == pytest.approx(rewards[3] / (1 - gamma), rel=1e-5)  # the last step: r_T for ever
    # online: one finished episode at a time, the same numbers
    np.testing.assert_allclose(reference_returns(rewards[4:], ends[4:], cfg.domain, cfg.algo, terminals[4:]),
                               expected[4:], rtol=1e-5)
    # a terminal last step gets no tail, as in the authors' (1 - terminal)
    terminal_end = np.array([0, 0, 1], bool)
    np.testing.assert_allclose(reference_returns(rewards[4:], ends[4:], cfg.domain, cfg.algo, terminal_end),
                               authors_return_to_go(rewards[4:], terminal_end, gamma, True), rtol=1e-5)


def test_finite_horizon_domains_have_no_tail():
    from o2o.returns import label_rewards

    cfg = validate(compose(["env=adroit_door_dense", "algo=calql"]))
    assert not cfg.domain.infinite_horizon
    raw = np.array([1.0, 2.0, 3.0], np.float32)
    rewards, g = label_rewards(raw, np.array([0, 0, 1], bool), cfg.domain, cfg.algo, np.zeros(3, bool))
    np.testing.assert_allclose(g, authors_return_to_go(rewards, np.zeros(3), cfg.algo.gamma, False), rtol=1e-6)
