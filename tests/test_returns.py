import numpy as np
import pytest

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
