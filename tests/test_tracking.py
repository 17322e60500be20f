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


def test_metrics_are_batched_and_a_continued_run_skips_logged_steps(tmp_path, caplog):
    uri = f"sqlite:///{tmp_path / 's.db'}"
    tracker = Tracker("batch", "r", {"group": {"x": 1}}, {"algo": "a"}, tracking_uri=uri)
    for step in range(MAX_BATCH + 5):  # the queue is sent once it holds MAX_BATCH points
        tracker.log_metrics({"m": float(step), "bad": float("nan"), "online/train/v_ref": float("nan")}, step)
    assert len(tracker._pending) == 5
    # the skipped value is said once; a V_ref mean with no known row yet is expected, and not said
    said = [r.getMessage() for r in caplog.records if "MLflow keeps finite values only" in r.getMessage()]
    assert said == ["bad is nan at step 0: MLflow keeps finite values only, so its curve has a gap there"]
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
    with pytest.raises(ConfigError, match="system_metrics_interval_s must be >= 1"):
        validate(compose(["mlflow.system_metrics_interval_s=0"]))  # at least a second (MlflowConfig.check)


def test_the_folder_check_of_jobs_started_at_once_takes_a_folder_another_job_made_or_removed(tmp_path, monkeypatch):
    """Jobs started together check the same outputs folder: one that another job makes between this check's look and
    its mkdir is used (it stopped a job of the four-job test with "cannot be written (File exists)"), and one that
    another job's check removes before this one writes in it is checked again."""
    import pathlib
    import tempfile

    from o2o.tracking import check_writable_folder
    from o2o.errors import ConfigError

    target = tmp_path / "out" / "runs"
    real_mkdir, real_temp = pathlib.Path.mkdir, tempfile.TemporaryFile

    def made_by_another_job_first(self, *args, **kwargs):
        real_mkdir(self, *args, **kwargs)  # the other job's
        raise FileExistsError(17, "File exists", str(self))

    monkeypatch.setattr(pathlib.Path, "mkdir", made_by_another_job_first)
    check_writable_folder(str(target), "the outputs folder (O2O_OUTPUTS)")
    assert target.is_dir()  # the other job's folders: not this check's to remove
    monkeypatch.setattr(pathlib.Path, "mkdir", real_mkdir)
    removed = []

    def removed_once(*args, **kwargs):
        if not removed:
            removed.append(True)
            raise FileNotFoundError(2, "No such file or directory")
        return real_temp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "TemporaryFile", removed_once)
    check_writable_folder(str(tmp_path / "elsewhere"), "the outputs folder (O2O_OUTPUTS)")
    assert removed and not (tmp_path / "elsewhere").exists()  # checked again; what it made, removed
    monkeypatch.setattr(tempfile, "TemporaryFile", lambda *a, **k: (_ for _ in ()).throw(FileNotFoundError(2, "gone")))
    with pytest.raises(ConfigError, match=r"cannot be written \(gone\)"):  # not forever
        check_writable_folder(str(tmp_path / "never"), "the outputs folder (O2O_OUTPUTS)")


def test_four_jobs_started_in_the_same_second_get_four_folders_and_four_complete_runs(tmp_path):
    """Default run folders (no hydra.run.dir), four jobs at once on one store: each has its own folder and its own
    MLflow run, with its own param and no duplicate steps."""
    import os
    import subprocess
    import sys

    from mlflow.tracking import MlflowClient

    from conftest import ROOT, SMOKE

    store = f"sqlite:///{tmp_path / 'mlflow.db'}"
    env = {**os.environ, "O2O_OUTPUTS": str(tmp_path / "out"), "MLFLOW_TRACKING_URI": store}
    rates = ["1e-4", "2e-4", "3e-4", "4e-4"]
    jobs = [subprocess.Popen([sys.executable, str(ROOT / "src" / "main.py"), *SMOKE, "schedule.online_steps=100",
                              "mlflow_experiment=o2o-same-second", "mlflow.log_models=false", "progress=false",
                              f"algo.critic_lr={lr}"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                             text=True) for lr in rates]
    errors = [job.communicate(timeout=600)[1] for job in jobs]
    assert [job.returncode for job in jobs] == [0] * 4, errors
    folders = sorted((tmp_path / "out" / "runs" / "pointmaze_umaze" / "calql" / "seed0").iterdir())
    assert len(folders) == 4  # O2O_OUTPUTS moved them, and none is shared
    client = MlflowClient(store)
    runs = client.search_runs([client.get_experiment_by_name("o2o-same-second").experiment_id])
    assert len(runs) == 4 and {r.info.status for r in runs} == {"FINISHED"}
    assert sorted(float(r.data.params["algo.critic_lr"]) for r in runs) == sorted(float(x) for x in rates)
    assert len({r.data.tags["run_dir"] for r in runs}) == 4
    for r in runs:
        steps = [m.step for m in client.get_metric_history(r.info.run_id, "online/eval/success_rate")]
        assert steps == sorted(set(steps)), steps  # one writer per run: no duplicate steps
        assert r.inputs.dataset_inputs, "each run logs its dataset"


def test_a_run_folder_in_use_by_another_job_is_refused(tmp_path):
    import subprocess
    import sys

    import pytest

    from conftest import ROOT, SMOKE
    from o2o.errors import ConfigError
    from o2o.pipeline import claim_run_dir

    from o2o.config import job_folder

    run = tmp_path / "sweep" / job_folder("env.dataset.collector.steps=1500,experiment=smoke,seed=0")  # the job's own
    run.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; sys.path.insert(0, 'src');"
                               "from pathlib import Path; from o2o.pipeline import claim_run_dir;"
                               f"claim_run_dir(Path({str(run)!r})); print('held', flush=True); time.sleep(30)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(ConfigError, match="is in use by process"):
            claim_run_dir(run)
        # from the command line it is refused before Hydra starts: the running job's .hydra/ stays as it wrote it
        (run / ".hydra").mkdir()
        (run / ".hydra" / "overrides.yaml").write_text("- seed=0\n")
        done = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), *SMOKE, f"hydra.run.dir='{run}'",
                               "seed=1"], capture_output=True, text=True, timeout=120)
        assert done.returncode == 2 and done.stderr.strip() == (
            f"error: run folder {run} is in use by process {holder.pid}: wait for it to end, or give this job "
            "its own hydra.run.dir")
        assert (run / ".hydra" / "overrides.yaml").read_text() == "- seed=0\n"
        assert sorted(p.name for p in run.iterdir()) == [".hydra", ".o2o-run.lock"]
        # the same for a sweep started again in the sweep folder that holds it: refused before Hydra writes anything
        sweep = subprocess.run([sys.executable, str(ROOT / "src" / "main.py"), "-m", *SMOKE,
                                f"hydra.sweep.dir={run.parent}", "seed=0,1"], capture_output=True, text=True,
                               timeout=120)
        assert sweep.returncode == 2 and sweep.stderr.strip() == (
            f"error: run folder {run} is in use by process {holder.pid}: wait for it to end, or give this sweep "
            "its own hydra.sweep.dir")
        assert (run / ".hydra" / "overrides.yaml").read_text() == "- seed=0\n"
        assert not (run.parent / "multirun.yaml").exists()
    finally:
        holder.kill()
        holder.wait()
    claim_run_dir(run)  # free again once the other process is gone


def test_a_sweep_job_folder_is_one_short_level_named_by_its_overrides():
    from o2o.config import JOB_FOLDER_MAX, job_folder

    assert job_folder("algo=cql,seed=1") == "algo=cql,seed=1"
    assert job_folder("env.dataset.path=/data/awac,seed=0") == "env.dataset.path=_data_awac,seed=0"
    long_a = ",".join(f"algo.key{i}={i}" for i in range(40))
    long_b = long_a + ",seed=1"
    names = {job_folder(long_a), job_folder(long_b)}
    assert len(names) == 2 and all(len(n) == JOB_FOLDER_MAX for n in names)
    assert job_folder(long_a) == job_folder(long_a) and job_folder(long_a).startswith("algo.key0=0,algo.key1=1")
    assert job_folder("") == "job"
