"""MLflow store handling: parallel jobs on a new sqlite store, batching, resuming without duplicates; content digests
and the config of what MLflow records."""
import subprocess
import sys

import pytest

from mlflow.tracking import MlflowClient

from o2o.tracking import MAX_BATCH, Tracker, flatten

START = ("import sys; from o2o.tracking import Tracker; "
         "t = Tracker('race', None, {'a': 1}, {'algo': 'x'}, tracking_uri=sys.argv[1]); t.end()")


def test_parallel_jobs_create_a_new_sqlite_store_safely(tmp_path):
    uri = f"sqlite:///{tmp_path / 'new.db'}"
    procs = [subprocess.Popen([sys.executable, "-c", START, uri], stderr=subprocess.PIPE, text=True)
             for _ in range(3)]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    client = MlflowClient(uri)
    assert len(client.search_runs([client.get_experiment_by_name("race").experiment_id])) == 3


def test_metrics_are_batched_and_a_continued_run_skips_logged_steps(tmp_path):
    uri = f"sqlite:///{tmp_path / 's.db'}"
    tracker = Tracker("batch", "r", {"group": {"x": 1}}, {"algo": "a"}, tracking_uri=uri)
    for step in range(MAX_BATCH + 5):  # the queue is sent once it holds MAX_BATCH points
        tracker.log_metrics({"m": float(step), "bad": float("nan")}, step)
    assert len(tracker._pending) == 5
    tracker.flush()
    continued = Tracker("batch", "r", {}, {"algo": "a"}, tracking_uri=uri, run_id=tracker.run_id)
    continued.log_metrics({"m": -1.0}, 10)  # already logged: dropped
    continued.log_metrics({"m": 7.0}, MAX_BATCH + 5)
    continued.end()
    history = MlflowClient(uri).get_metric_history(tracker.run_id, "m")
    assert [m.step for m in history] == list(range(MAX_BATCH + 6))
    run = MlflowClient(uri).get_run(tracker.run_id)
    assert run.data.params == {"group.x": "1"} and "bad" not in run.data.metrics


def test_flatten():
    assert flatten({"a": {"b": 1, "c": {"d": 2}}, "e": 3}) == {"a.b": 1, "a.c.d": 2, "e": 3}


def test_a_kill_during_the_first_creation_of_a_store_leaves_none_behind(tmp_path, monkeypatch):
    from o2o import tracking

    uri = f"sqlite:///{tmp_path / 'fresh.db'}"
    real = tracking.os.replace

    def killed(src, dst):
        raise KeyboardInterrupt  # after the migration, before the rename

    monkeypatch.setattr(tracking.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        tracking.open_store(uri)
    assert not (tmp_path / "fresh.db").exists()  # nothing half-migrated where the next job looks
    monkeypatch.setattr(tracking.os, "replace", real)
    client = tracking.open_store(uri)
    assert client.get_experiment(client.create_experiment("after")).name == "after"
    assert not [p for p in tmp_path.iterdir() if ".creating-" in p.name]


def test_a_content_digest_changes_with_any_value_shape_or_dtype():
    import numpy as np

    from o2o.lineage import digest

    obs, actions = np.arange(12, dtype=np.float32).reshape(6, 2), np.zeros((6, 1), np.float32)
    base = digest(obs, actions)
    assert digest(obs.copy(), actions.copy()) == base and len(base) == 16
    changed = obs.copy()
    changed[3, 1] += 1e-3
    assert digest(changed, actions) != base
    assert digest(obs.reshape(3, 4), actions) != base  # same bytes, other shape
    assert digest(obs.astype(np.float64), actions) != base
    assert digest(obs[::2], actions) == digest(np.ascontiguousarray(obs[::2]), actions)  # views hash their values


def test_bookkeeping_keys_stay_out_of_report_groups_and_sweep_folder_names():
    """conf/config.yaml's override_dirname exclusions and the report's NOT_CONFIG list the same bookkeeping keys."""
    from omegaconf import OmegaConf

    from conftest import ROOT
    from o2o.report import NOT_CONFIG

    excluded = OmegaConf.load(ROOT / "conf" / "config.yaml").hydra.job.config.override_dirname.exclude_keys
    assert set(excluded) <= set(NOT_CONFIG)
    assert {"mlflow.log_models", "mlflow.system_metrics"} <= set(excluded)


def test_registering_a_model_needs_the_models_logged():
    from conftest import compose
    from o2o.config import validate
    from o2o.errors import ConfigError

    assert validate(compose(["mlflow.registered_model=door-policy"])).mlflow.registered_model == "door-policy"
    with pytest.raises(ConfigError, match="mlflow.registered_model needs mlflow.log_models=true"):
        validate(compose(["mlflow.registered_model=door-policy", "mlflow.log_models=false"]))
    with pytest.raises(ConfigError, match="system_metrics_interval_s must be > 0"):
        validate(compose(["mlflow.system_metrics_interval_s=0"]))
