"""reference=quantile: rlox's calibration threshold (one tau-quantile of the episodes' returns) as V_ref."""
import numpy as np
import pytest
import torch

from conftest import SMOKE, compose
from o2o.buffers import TransitionBuffer
from o2o.config import validate
from o2o.errors import ConfigError
from o2o.reference import QuantileReference


def buffer_with(v_ref):
    n = len(v_ref)
    buffer = TransitionBuffer(n + 10, 2, 1, torch.device("cpu"))
    if n:
        buffer.add(np.zeros((n, 2)), np.zeros((n, 1)), np.zeros(n), np.zeros((n, 2)), np.zeros(n), np.asarray(v_ref))
    return buffer


def test_the_threshold_is_the_quantile_of_the_returns_and_every_state_shares_it():
    reference = QuantileReference(0.25, np.array([1.0, 2.0, 3.0, 4.0]))
    assert reference.threshold == pytest.approx(1.75)  # numpy's linear quantile of 1, 2, 3, 4 at 0.25
    offline, online = buffer_with([5.0, 6.0, 7.0]), buffer_with([])
    reference.attach(offline)
    reference.attach(online)
    assert offline.batch(slice(0, 3)).v_ref.tolist() == [1.75] * 3
    values = reference.episode_values(torch.tensor([10.0, 9.0, 8.0]), observations=None)  # return at its start: 10
    assert reference.threshold == pytest.approx(2.0)  # quantile of 1, 2, 3, 4, 10 at 0.25
    assert values.tolist() == [2.0] * 3 and offline.storage[:3, -1].tolist() == [2.0] * 3
    again = QuantileReference(0.25, np.array([1.0, 2.0, 3.0, 4.0]))
    again.attach(buffer := buffer_with([0.0]))
    again.load_state(reference.state())  # a resumed run: the online returns come back, the buffers follow
    assert again.threshold == reference.threshold and buffer.storage[0, -1].item() == pytest.approx(2.0)


def test_the_offline_returns_are_each_episodes_return_to_go_at_its_start():
    from o2o.pipeline import fit_reference

    cfg = validate(compose(["reference=quantile", "reference.tau=1.0"]))
    offline = buffer_with([-3.0, -2.0, -1.0, -7.0, -6.0])
    ends = np.array([False, False, True, False, True])
    reference = fit_reference(offline, cfg, tracker=None, episode_ends=ends, log_fit=False)
    assert sorted(reference.offline_returns.tolist()) == [-7.0, -3.0] and reference.threshold == -3.0
    assert offline.storage[:5, -1].tolist() == [-3.0] * 5


def test_the_preset_and_its_checks():
    assert validate(compose(["reference=quantile"])).reference.tau == 0.5  # rlox's default calibration_tau
    with pytest.raises(ConfigError, match=r"reference.tau in \[0, 1\]"):
        validate(compose(["reference=quantile", "reference.tau=1.5"]))


def test_a_run_labels_every_transition_with_the_current_threshold(tmp_path, monkeypatch):
    """In a run: after each online episode every transition of both buffers holds the one current threshold."""
    import os

    from mlflow.tracking import MlflowClient

    from o2o import metrics as M, run
    from o2o.reference import QuantileReference as Quantile

    from o2o.data.offline_data import OfflineData

    # the run's offline episodes are the recorded ones (an Adroit success made terminal ends none): here one
    def one_recorded_episode(data):
        return np.arange(len(data.terminals)) == len(data.terminals) - 1

    monkeypatch.setattr(OfflineData, "recorded_episode_ends", property(one_recorded_episode))
    offline_returns = []
    made = Quantile.__init__
    monkeypatch.setattr(Quantile, "__init__", lambda self, tau, returns: (offline_returns.append(len(returns)),
                                                                           made(self, tau, returns))[1])
    seen = []
    real = Quantile.episode_values

    def spy(self, mc_returns, observations):
        values = real(self, mc_returns, observations)
        seen.append((self.threshold, [b.storage[: len(b), -1].unique().tolist() for b in self.buffers]))
        return values

    monkeypatch.setattr(Quantile, "episode_values", spy)
    final = run(algo="calql", run_dir=str(tmp_path), overrides=[*SMOKE, "reference=quantile", "reference.tau=0.75",
                                                                "schedule.online_steps=600", "mlflow.log_models=false",
                                                                "mlflow_experiment=o2o-quantile"])
    assert len(seen) == final[M.EPISODES] >= 2
    assert offline_returns == [1]
    for threshold, per_buffer in seen:
        assert len(per_buffer) == 2 and all(values == [pytest.approx(threshold)] for values in per_buffer if values)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    run_id = (tmp_path / "mlflow_run_id").read_text().strip()
    assert len(client.get_metric_history(run_id, M.reference(M.ONLINE, "v_ref_mae"))) == len(seen)


def test_an_episode_that_succeeds_twice_counts_once():
    """The Adroit rule makes every success step terminal; the quantile's episodes are the recorded ones (cut after
    their last success), not the one-step pieces after each later success."""
    from o2o.data.offline_data import OfflineData, apply_binary_success

    n = 8  # one recorded episode: successes at steps 3, 5 and 6, then a failure step that the rule drops
    data = OfflineData(observations=np.zeros((n, 2), np.float32), actions=np.zeros((n, 1), np.float32),
                       rewards=np.zeros(n, np.float32), next_observations=np.zeros((n, 2), np.float32),
                       terminals=np.zeros(n, bool), timeouts=np.arange(n) == n - 1,
                       success=np.isin(np.arange(n), [3, 5, 6]))
    binary = apply_binary_success(data)
    assert binary.num_episodes == 3  # the rule's pieces: 0-3, 4-5, 6
    assert binary.recorded_episode_ends.tolist() == [False] * 6 + [True]
    assert binary.select(np.ones(7, bool)).recorded_episode_ends.tolist() == [False] * 6 + [True]
