"""Adroit datasets built from the DAPG assets, the binary reward, and dataset listing."""
from pathlib import Path

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
                   reference_episodes=1, seed=0, awac_rollouts=2, awac_bc_max_steps=300)
    return report


@needs_assets
def test_built_datasets_report_sizes_and_honest_metadata(built_door):
    import minari

    assert set(built_door) == {"o2o-test/door/expert-v0", "o2o-test/door/human-v0", "o2o-test/door/cloned-v0",
                               "o2o-test/door/awac-recipe-v0"}
    human = built_door["o2o-test/door/human-v0"]
    assert human["episodes"] == 25 and human["transitions"] == 6729 - 25
    assert built_door["o2o-test/door/cloned-v0"]["episodes"] == 27
    assert built_door["o2o-test/door/expert-v0"]["success_rate"] == 1.0
    meta = minari.load_dataset("o2o-test/door/cloned-v0").storage.metadata
    assert meta["ref_max_score"] > meta["ref_min_score"] and "behaviour-cloning" in meta["description"]


@needs_assets
def test_the_awac_recipe_is_the_demonstrations_then_full_length_bc_rollouts(built_door):
    import minari

    from o2o.data.build.adroit import HORIZON
    from o2o.data.build.awac_recipe import AWAC_HORIZON

    summary = built_door["o2o-test/door/awac-recipe-v0"]
    assert summary["episodes"] == 25 + 2 and summary["bc_max_steps"] == 300
    assert summary["bc_step_kept"] == 300  # one check below 500 steps
    dataset = minari.load_dataset("o2o-test/door/awac-recipe-v0")
    lengths = [len(e.actions) for e in dataset.iterate_episodes()]
    assert sum(lengths[:25]) == 6729 - 25 and lengths[25:] == [AWAC_HORIZON] * 2 == [HORIZON["door"]] * 2
    description = dataset.storage.metadata["description"]
    assert "NOT AWAC's" in description and "step" in description


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


def test_gaussian_bc_is_rlkits_policy_and_keeps_its_best_held_out_step():
    import torch

    from o2o.data.build.awac_recipe import GaussianBC, fit_gaussian_bc, sampling_policy

    rng = np.random.default_rng(0)
    obs = rng.standard_normal((400, 5)).astype(np.float32)
    act = np.tanh(obs[:, :2] * 0.8 + 0.05 * rng.standard_normal((400, 2))).astype(np.float32)
    policy, fit = fit_gaussian_bc(obs, act, seed=0, max_steps=60, check_every=10)
    steps, nlls = zip(*fit["bc_held_out_history"])
    assert steps == (10, 20, 30, 40, 50, 60) and fit["bc_step_kept"] == steps[int(np.argmin(nlls))]
    # the weights kept are the ones of that check: their held-out NLL, recomputed, is the minimum
    held = torch.randperm(400, generator=torch.Generator().manual_seed(0))[:40]
    with torch.no_grad():
        assert float(policy.nll(torch.as_tensor(obs)[held], torch.as_tensor(act)[held])) == pytest.approx(min(nlls), rel=1e-5)
    # the NLL is the diagonal Gaussian's, with the log-std in rlkit's [-6, 0] through a sigmoid
    fresh = GaussianBC(5, 2)
    with torch.no_grad():
        fresh.log_std_logits.copy_(torch.tensor([0.0, 3.0]))
        log_std = -6 + 6 / (1 + np.exp(-np.array([0.0, 3.0])))
        mean = fresh(torch.as_tensor(obs[:3])).mean.numpy()
        direct = (0.5 * ((act[:3] - mean) / np.exp(log_std)) ** 2 + log_std + 0.5 * np.log(2 * np.pi)).sum(1).mean()
        assert float(fresh.nll(torch.as_tensor(obs[:3]), torch.as_tensor(act[:3]))) == pytest.approx(direct, rel=1e-5)
        assert np.allclose(fresh(torch.as_tensor(obs[:1])).stddev.numpy(), np.exp(log_std))
    # sampling: the mean plus the fitted std times the seeded noise, clipped to the action bounds
    sample = sampling_policy(fresh, np.random.default_rng(3))(obs[0])
    noise = np.random.default_rng(3).standard_normal(2)
    expected = np.clip(fresh(torch.as_tensor(obs[0])).mean.detach().numpy() + np.exp(log_std) * noise, -1, 1)
    np.testing.assert_allclose(sample, expected, rtol=1e-5)


@needs_assets
def test_pen_awac_recipe_has_expert_episodes_standing_in_and_says_so():
    import minari

    from o2o.data.build.adroit import build

    report = build(ASSETS, namespace="o2o-test-pen", tasks=["pen"], expert_episodes=1, reference_episodes=1, seed=0,
                   awac_rollouts=2, awac_bc_max_steps=50)
    assert set(report) == {"o2o-test-pen/pen/expert-v0", "o2o-test-pen/pen/awac-recipe-expert-demos-v0"}
    dataset = minari.load_dataset("o2o-test-pen/pen/awac-recipe-expert-demos-v0")
    assert [len(e.actions) for e in dataset.iterate_episodes()] == [100] * 27  # 25 stand-ins + 2 rollouts, the env's 100
    description = dataset.storage.metadata["description"]
    assert "NOT AWAC's pen2_sparse.npy" in description and "expert policy" in description and "standing in" in description
    again = build(ASSETS, namespace="o2o-test-pen", tasks=["pen"], expert_episodes=1, reference_episodes=1, seed=0,
                  awac_rollouts=2, awac_bc_max_steps=50)
    assert again["o2o-test-pen/pen/awac-recipe-expert-demos-v0"] == {"skipped": True}


@needs_assets
def test_the_awac_recipe_rolled_out_from_kept_bc_weights_is_the_same_data_without_a_fit(tmp_path, monkeypatch):
    """The builder keeps the fitted BC policy beside the data; a build from those weights skips the fit (the part that
    differs between CPU kinds) and writes the same episodes."""
    import hashlib
    import shutil

    from o2o.data.build import awac_recipe
    from o2o.data.build.adroit import build
    from o2o.data.minari import minari_root

    def digest(dataset_id):
        return hashlib.sha256((Path(minari_root()) / dataset_id / "data" / "main_data.hdf5").read_bytes()).hexdigest()

    kwargs = dict(namespace="o2o-test-w", tasks=["pen"], expert_episodes=1, reference_episodes=1, seed=0,
                  awac_rollouts=2, awac_bc_max_steps=50)
    build(ASSETS, **kwargs)
    dataset_id = "o2o-test-w/pen/awac-recipe-expert-demos-v0"
    first, kept = digest(dataset_id), tmp_path / "pen_bc.npz"
    shutil.copy2(Path(minari_root()) / dataset_id / awac_recipe.BC_WEIGHTS, kept)

    def no_fit(*args, **kwargs):
        raise AssertionError("fit again")

    monkeypatch.setattr(awac_recipe, "fit_gaussian_bc", no_fit)
    build(ASSETS, **kwargs, overwrite=True, awac_bc_weights={"pen": kept})
    assert digest(dataset_id) == first
