"""Adroit datasets built from the DAPG assets, the binary reward, and dataset listing."""
import numpy as np
import pytest

from conftest import SHARED, SMOKE_ANY_ENV, compose
from o2o.config import validate
from o2o.data.offline_data import OfflineData, apply_binary_success
from o2o.returns import returns_to_go, transform_reward

ASSETS = SHARED / "data" / "hand_dapg"
needs_assets = pytest.mark.skipif(not (ASSETS / "door-v0_human_demos.npz").exists(),
                                  reason=f"DAPG assets not found at {ASSETS} (../shared beside the checkout)")


def test_binary_reward_and_failure_rule_on_a_synthetic_episode():
    full = validate(compose(["env=adroit_door"]))
    cfg, algo = full.domain, full.algo
    success = np.array([0, 0, 1, 1, 0, 0, 0, 0, 0], bool)  # episode 1: steps 0-5, episode 2: steps 6-8
    n = len(success)
    data = OfflineData(np.zeros((n, 1), np.float32), np.zeros((n, 1), np.float32), np.full(n, 7.0, np.float32),
                       np.zeros((n, 1), np.float32), np.zeros(n, bool), np.array([0, 0, 0, 0, 0, 1, 0, 0, 1], bool),
                       success=success)
    binary = apply_binary_success(data)
    rewards = transform_reward(binary.rewards, algo)
    np.testing.assert_array_equal(rewards, [-5.0, -5.0, 5.0, 5.0])  # cut after the last success; episode 2 dropped
    g = returns_to_go(rewards, binary.episode_ends, 0.99, fail_reward=transform_reward(cfg.fail_reward, algo))
    # success steps are terminal: each one ends its segment
    np.testing.assert_allclose(g, [-5 - 0.99 * 5 + 0.99**2 * 5, -5 + 0.99 * 5, 5.0, 5.0], rtol=1e-6)
    online_failure = returns_to_go(np.full(3, -5.0), np.array([0, 0, 1], bool), 0.99, fail_reward=-5.0)
    np.testing.assert_allclose(online_failure, [-500.0] * 3, rtol=1e-6)


@pytest.fixture(scope="module")
def built_door():
    if not (ASSETS / "door-v0_human_demos.npz").exists():
        pytest.skip(f"DAPG assets not found at {ASSETS} (../shared beside the checkout)")
    from o2o.data.build.adroit import build

    report = build(ASSETS, namespace="o2o-test", tasks=["door"], expert_episodes=2, cloned_episodes=2, bc_steps=50,
                   reference_episodes=1, seed=0)
    return report


@needs_assets
def test_built_datasets_report_sizes_and_honest_metadata(built_door):
    import minari

    assert set(built_door) == {"o2o-test/door/expert-v0", "o2o-test/door/human-v0", "o2o-test/door/cloned-v0"}
    human = built_door["o2o-test/door/human-v0"]
    assert human["episodes"] == 25 and human["transitions"] == 6729 - 25
    assert built_door["o2o-test/door/cloned-v0"]["episodes"] == 27
    assert built_door["o2o-test/door/expert-v0"]["success_rate"] == 1.0
    meta = minari.load_dataset("o2o-test/door/cloned-v0").storage.metadata
    assert meta["ref_max_score"] > meta["ref_min_score"] and "behaviour-cloning" in meta["description"]


@needs_assets
def test_built_human_door_loads_back_with_the_same_arrays(built_door):
    from o2o.data.build.adroit import human_door_episodes
    from o2o.data.minari import load_minari

    episodes = human_door_episodes(np.load(ASSETS / "door-v0_human_demos.npz"))
    data = load_minari("o2o-test/door/human-v0", [], download=False)
    np.testing.assert_allclose(data.observations, np.concatenate([e.observations[:-1] for e in episodes]))
    np.testing.assert_allclose(data.next_observations, np.concatenate([e.observations[1:] for e in episodes]))
    np.testing.assert_allclose(data.actions, np.concatenate([e.actions for e in episodes]))
    np.testing.assert_allclose(data.rewards, np.concatenate([e.rewards for e in episodes]))
    np.testing.assert_array_equal(data.success, np.concatenate([e.success[1:] for e in episodes]))
    assert data.num_episodes == 25 and not data.terminals.any()


@needs_assets
def test_calql_smoke_run_on_the_built_door_data(built_door, tmp_path):
    from o2o import run

    final = run(env="adroit_door", algo="calql", run_dir=str(tmp_path),
                overrides=[*SMOKE_ANY_ENV, "env.dataset.id=o2o-test/door/cloned-v0", "domain.eval_episodes=1",
                           "schedule.online_steps=200", "mlflow_experiment=o2o-door"])
    assert final["online/env_steps"] == 200 and 0.0 <= final["online/success_rate"] <= 1.0
    assert "online/normalized_return" not in final  # evaluation episodes end at success: no D4RL return


@needs_assets
def test_list_shows_local_and_remote_datasets(built_door, capsys):
    from o2o.data.build.cli import main

    main(["list"])
    out = capsys.readouterr().out
    assert "o2o-test/door/human-v0" in out and "local" in out
    assert "D4RL/door/cloned-v2" in out and "remote" in out and "env=adroit_door" in out


def test_official_namespace_is_refused():
    from o2o.data.build.cli import main

    with pytest.raises(SystemExit):
        main(["build-adroit", "--namespace", "D4RL"])
