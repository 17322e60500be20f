"""Checkpoint and resume: kill -9 or a preemption signal mid-stage, rerun, and get the uninterrupted result."""
import json
import os
import signal
import subprocess
import time

import numpy as np
import pytest
import torch
from mlflow.tracking import MlflowClient

from conftest import ROOT, SMOKE
from o2o.runtime import machine

RESUMABLE = [*SMOKE, "mlflow_experiment=o2o-resume", "schedule.offline_steps=300", "schedule.online_steps=900",
             "schedule.checkpoint_interval=50", "schedule.log_interval=10", "schedule.eval_interval_offline=100",
             "schedule.eval_interval_online=300", "domain.eval_episodes=1", "progress=false"]


def command(run_dir):
    return [os.sys.executable, str(ROOT / "src" / "main.py"), *RESUMABLE, f"hydra.run.dir={run_dir}"]


def progress(run_dir):
    try:
        return json.loads((run_dir / "checkpoints" / "progress.json").read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def interrupt(run_dir, stage, sig):
    """Start a run and send ``sig`` once its first checkpoint of ``stage`` exists."""
    proc = subprocess.Popen(command(run_dir), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        p = progress(run_dir)
        if p and p["stage"] == stage:
            proc.send_signal(sig)
            break
        time.sleep(0.02)
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def finish(run_dir):
    proc = subprocess.run(command(run_dir), capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    final = torch.load(run_dir / "checkpoints" / "final.pt", weights_only=False)
    return {**final["final"], "eval_history": final["eval_history"]}


def comparable(final):
    return {k: v for k, v in final.items() if "updates_per_second" not in k}


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    return comparable(finish(tmp_path_factory.mktemp("uninterrupted")))


def mlflow_run(run_dir):
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    return client, client.get_run((run_dir / "mlflow_run_id").read_text().strip())


@pytest.mark.parametrize("stage", ["offline", "online"])
def test_kill_9_mid_stage_then_rerun_equals_uninterrupted(stage, uninterrupted, tmp_path):
    code, _ = interrupt(tmp_path, stage, signal.SIGKILL)
    assert code == -signal.SIGKILL, "the run ended before it could be killed"
    assert not (tmp_path / "checkpoints" / "final.pt").exists()
    assert progress(tmp_path)["stage"] == stage
    assert comparable(finish(tmp_path)) == uninterrupted

    client, run = mlflow_run(tmp_path)
    assert run.info.status == "FINISHED" and run.data.tags["stage"] == "finished"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "offline/train/critic_loss")]
    assert steps == list(range(10, 301, 10))  # continuous: nothing missing, nothing twice
    online = [m.step for m in client.get_metric_history(run.info.run_id, "online/eval/success_rate")]
    assert online == sorted(set(online)) and online[-1] == 900
    runs = client.search_runs([run.info.experiment_id], f"tags.run_dir = '{tmp_path}'")
    assert len(runs) == 1
    assert run.data.tags["machines"] == machine()  # both parts on this machine: named once


def test_preemption_signal_saves_and_the_rerun_resumes(uninterrupted, tmp_path):
    code, err = interrupt(tmp_path, "online", signal.SIGUSR2)
    assert code == 128 + signal.SIGUSR2, err[-2000:]
    assert "preempted" in err
    client, run = mlflow_run(tmp_path)
    assert run.data.tags["stage"] == "preempted"
    assert run.info.status == "KILLED" and "failure" not in run.data.tags  # stopped from outside, not failed
    other = subprocess.run(command(tmp_path) + ["threads=2"], capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "another config (threads: 1 in the run, 2 now)" in other.stderr  # unfinished
    assert comparable(finish(tmp_path)) == uninterrupted


def test_a_finished_run_is_not_redone(tmp_path):
    finish(tmp_path)
    before = (tmp_path / "checkpoints" / "final.pt").stat().st_mtime
    proc = subprocess.run(command(tmp_path), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "already finished" in proc.stderr + proc.stdout
    assert (tmp_path / "checkpoints" / "final.pt").stat().st_mtime == before
    # other threads, progress and device change nothing a finished run computed: it matches its job, which does
    # nothing (an unfinished run still resumes only with the values its MLflow params hold)
    proc = subprocess.run(command(tmp_path) + ["threads=2", "progress=true", "device=cpu"], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "holds this job's finished run, run with other device: auto in the run, cpu now; progress: False in the " \
           "run, True now; threads: 1 in the run, 2 now" in proc.stderr + proc.stdout
    assert (tmp_path / "checkpoints" / "final.pt").stat().st_mtime == before


def test_resuming_with_another_config_is_refused(tmp_path):
    finish(tmp_path)
    records = {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()}
    proc = subprocess.run(command(tmp_path) + ["seed=5"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "another config (seed: 0 in the run, 5 now)" in proc.stderr
    # refused before Hydra starts: .hydra/overrides.yaml, the record needed to resume, is untouched
    assert {p: p.read_bytes() for p in tmp_path.rglob("*") if p.is_file()} == records


def test_step_schedule_preempted_mid_episode_keeps_what_it_learnt_and_finishes(tmp_path, monkeypatch):
    """SAC learns while acting: a preemption mid-episode saves the partial episode (as truncated) with the
    agent that learnt from it; the rerun starts a new episode and takes exactly the planned updates."""
    from o2o import run
    from o2o.stages import online

    overrides = [*SMOKE, "mlflow_experiment=o2o-resume-step", "schedule.online_steps=200", "algo.warmup_steps=50",
                 "schedule.eval_interval_online=100", "domain.eval_episodes=1", "progress=false"]
    real_call, calls = online.StepCollector.on_step, []

    def call(self, *args):
        real_call(self, *args)
        calls.append(1)
        if len(calls) == 120:  # mid-episode: the smoke PointMaze episodes last up to 300 steps
            os.kill(os.getpid(), signal.SIGUSR2)

    monkeypatch.setattr(online.StepCollector, "on_step", call)
    with pytest.raises(SystemExit) as stopped:
        run(algo="sac", run_dir=str(tmp_path), overrides=overrides)
    assert stopped.value.code == 128 + signal.SIGUSR2
    final = run(algo="sac", run_dir=str(tmp_path), overrides=overrides)
    assert final["online/env_steps"] == 200 and len(calls) == 200  # resumed at step 120, not started over
    state = torch.load(tmp_path / "checkpoints" / "final.pt", weights_only=False)
    assert state["agent"]["grad_steps"] == (200 - 50) * 1  # one update per env step after the warm-up, none lost


def test_a_preemption_signal_while_the_run_finishes_lets_it_finish(tmp_path, monkeypatch, caplog):
    """The finish (final evaluation, policy export, MLflow) is short and completes the run: a stop asked for there
    waits for it instead of killing it half-published, and nothing is left to resume."""
    import logging

    from o2o import pipeline, run

    real = pipeline.finish

    def signalled(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGUSR2)
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "finish", signalled)
    unguarded = []  # where no guard catches it, the signal lands here (not in the default action, which ends pytest)
    previous = signal.signal(signal.SIGUSR2, lambda *_: unguarded.append(1))
    try:
        with caplog.at_level(logging.WARNING, logger="o2o"):
            run(algo="calql", run_dir=str(tmp_path), overrides=[*SMOKE, "mlflow_experiment=o2o-finish-signal",
                                                              "schedule.online_steps=100", "progress=false"])
    finally:
        signal.signal(signal.SIGUSR2, previous)
    assert not unguarded
    assert "the stop asked for came while the run was finishing: it finished (nothing to resume)" in caplog.text
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (done,) = client.search_runs([client.get_experiment_by_name("o2o-finish-signal").experiment_id])
    assert done.info.status == "FINISHED" and (tmp_path / "checkpoints" / "final.pt").exists()


def test_a_run_continued_on_other_data_stops_naming_both_digests(tmp_path, monkeypatch):
    """A dataset file rewritten under the same name between a run's parts would mix two datasets in one run."""
    import h5py

    from o2o import pipeline, run
    from o2o.errors import DatasetError

    data = tmp_path / "data.hdf5"

    def write(seed):
        rng, n = np.random.default_rng(seed), 600
        with h5py.File(data, "w") as f:
            f["observations"] = rng.normal(size=(n, 6)).astype(np.float32)
            f["actions"] = rng.uniform(-1, 1, (n, 2)).astype(np.float32)
            f["rewards"] = np.zeros(n, np.float32)
            f["terminals"] = np.zeros(n, bool)
            f["timeouts"] = np.arange(n) % 300 == 299

    def stopped(*args, **kwargs):
        raise RuntimeError("stopped after the run was created")

    overrides = [*SMOKE, "env.dataset.id=null", f"env.dataset.path={data}", "mlflow_experiment=o2o-other-data",
                 "progress=false", "schedule.online_steps=0"]
    write(0)
    real = pipeline.run_stages
    monkeypatch.setattr(pipeline, "run_stages", stopped)
    with pytest.raises(RuntimeError, match="stopped after the run was created"):
        run(algo="calql", run_dir=str(tmp_path / "run"), overrides=overrides)
    monkeypatch.setattr(pipeline, "run_stages", real)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (first,) = client.search_runs([client.get_experiment_by_name("o2o-other-data").experiment_id])
    started_on = first.data.params["data.digest"]
    write(1)
    with pytest.raises(DatasetError, match=rf"data.hdf5, as read now, is not the data this run started on \(content "
                                           rf"digest {started_on}, now [0-9a-f]{{16}}: another file"):
        run(algo="calql", run_dir=str(tmp_path / "run"), overrides=overrides)
    write(0)  # the run's own data again: it goes on
    run(algo="calql", run_dir=str(tmp_path / "run"), overrides=overrides)
    (done,) = client.search_runs([client.get_experiment_by_name("o2o-other-data").experiment_id])
    assert done.info.run_id == first.info.run_id and done.info.status == "FINISHED"


def test_a_run_stopped_between_its_final_checkpoint_and_finished_is_completed_by_the_rerun(tmp_path, monkeypatch):
    from o2o import pipeline, run
    from o2o.policy_model import POLICY, PRETRAINED_POLICY, logged_model_names

    overrides = [*SMOKE, "mlflow_experiment=o2o-finish", "schedule.online_steps=100", "progress=false"]
    real = pipeline.publish_final
    monkeypatch.setattr(pipeline, "publish_final", lambda *args: None)  # as if killed right after final.pt
    first = run(algo="calql", run_dir=str(tmp_path), overrides=overrides)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (stuck,) = client.search_runs([client.get_experiment_by_name("o2o-finish").experiment_id])
    assert stuck.info.status == "RUNNING" and not any(k.startswith("final/") for k in stuck.data.metrics)
    monkeypatch.setattr(pipeline, "publish_final", real)
    assert run(algo="calql", run_dir=str(tmp_path), overrides=overrides) == first
    done = client.get_run(stuck.info.run_id)
    assert done.info.status == "FINISHED" and done.data.tags["stage"] == "finished"
    assert {f"final/{k.replace('/', '_')}" for k in first} <= set(done.data.metrics)
    assert "checkpoints/final.pt" in [a.path for a in client.list_artifacts(done.info.run_id, "checkpoints")]
    assert logged_model_names(client, done.info.run_id) == {POLICY, PRETRAINED_POLICY}  # the final policy too
    assert run(algo="calql", run_dir=str(tmp_path), overrides=overrides) == first  # finished: nothing more to do
    assert len(client.get_metric_history(done.info.run_id, "final/online_success_rate")) == 1
    assert len(client.get_run(done.info.run_id).outputs.model_outputs) == 2  # each policy logged once


def test_a_run_dir_without_a_checkpoint_refuses_another_config(tmp_path, monkeypatch):
    """Killed before its first checkpoint, the run dir already holds an MLflow run: other overrides must not log into it."""
    from o2o import pipeline, run
    from o2o.errors import ConfigError

    overrides = [*SMOKE, "mlflow_experiment=o2o-leak", "schedule.online_steps=100", "progress=false"]

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(pipeline, "run_stages", killed)
    with pytest.raises(KeyboardInterrupt):
        run(algo="calql", run_dir=str(tmp_path), overrides=overrides)
    assert (tmp_path / "mlflow_run_id").exists() and not (tmp_path / "checkpoints").exists()
    monkeypatch.undo()
    with pytest.raises(ConfigError, match=r"started with another config \(seed: 0 in the run, 5 now\)"):
        run(algo="calql", run_dir=str(tmp_path), overrides=[*overrides, "seed=5"])
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (only,) = client.search_runs([client.get_experiment_by_name("o2o-leak").experiment_id])
    assert only.data.params["seed"] == "0" and only.info.status == "KILLED"
    final = run(algo="calql", run_dir=str(tmp_path), overrides=overrides)  # the same config continues it
    assert final["online/env_steps"] == 100 and client.get_run(only.info.run_id).info.status == "FINISHED"


KILL_WINDOWS = {
    # right after final.pt is written, before anything of the finish reaches the store
    "after final.pt": "pipeline.publish_final = lambda *a, **k: os._exit(137)",
    # during the final policy's export (the pre-trained one went through before)
    "during the policy export": ("real = pipeline.publish_policy\n"
                                 "pipeline.publish_policy = lambda agent, cfg, tracker, name: os._exit(137) "
                                 "if name == 'policy' else real(agent, cfg, tracker, name)"),
    # inside the final policy's export, after its logged model is created (PENDING) and before it is finished
    "inside the model export": ("from mlflow.models import Model\n"
                                "real_log = Model.log\n"
                                "Model.log = classmethod(lambda cls, *a, **k: os._exit(137) if k.get('name') == 'policy' "
                                "else real_log.__func__(cls, *a, **k))"),
    # after final/* are sent, before the plots and the FINISHED status
    "after the final metrics": "pipeline.run_plot = lambda *a, **k: os._exit(137)",
}


def _histories(client, run_id):
    run = client.get_run(run_id)
    return {key: [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: (m.step, m.timestamp))]
            for key in run.data.metrics if "updates_per_second" not in key and not key.startswith("system/")}


FINISH_KILL_OVERRIDES = [*SMOKE, "schedule.online_steps=100", "progress=false", "mlflow.system_metrics=false",
                         "mlflow_experiment=o2o-finish-kill"]


@pytest.fixture(scope="module")
def whole_finish(tmp_path_factory):
    """The uninterrupted run every kill window is compared with, in the windows' experiment."""
    from o2o import run

    run_dir = tmp_path_factory.mktemp("whole")
    run(algo="calql", run_dir=str(run_dir), overrides=FINISH_KILL_OVERRIDES)
    return (run_dir / "mlflow_run_id").read_text().strip()


@pytest.mark.parametrize("window", KILL_WINDOWS)
def test_a_kill_in_any_window_of_the_finish_keeps_every_point(tmp_path, window, whole_finish):
    """kill -9 (os._exit) inside the finish, then the same command: every metric history equals an uninterrupted
    run's, point by point, without a duplicate."""
    killed_then_rerun(KILL_WINDOWS[window], tmp_path, FINISH_KILL_OVERRIDES)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    experiment = client.get_experiment_by_name("o2o-finish-kill").experiment_id
    (resumed,) = client.search_runs([experiment], f"tags.run_dir = '{tmp_path}'")  # the killed run, finished
    assert resumed.info.status == "FINISHED" and resumed.info.run_id != whole_finish
    assert _histories(client, resumed.info.run_id) == _histories(client, whole_finish)
    models = client.search_logged_models(experiment_ids=[resumed.info.experiment_id],
                                         filter_string=f"source_run_id = '{resumed.info.run_id}'")
    assert sorted((m.name, str(m.status)) for m in models) == [  # no PENDING model left behind, none twice
        ("policy", "READY"), ("pretrained_policy", "READY")]


def killed_then_rerun(kill: str, run_dir, overrides: list[str]) -> None:
    """A Cal-QL run in a process where ``kill`` (Python run after ``from o2o import pipeline, run``) makes it die with
    status 137, then the same run again in this process."""
    import subprocess
    import sys

    from o2o import run

    code = ("import os, sys\n"
            f"sys.path.insert(0, {str(ROOT / 'src')!r})\n"
            "from o2o import pipeline, run\n"
            f"{kill}\n"
            f"run(algo='calql', run_dir={str(run_dir)!r}, overrides={overrides!r})\n")
    killed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert killed.returncode == 137, killed.stderr[-2000:]
    run(algo="calql", run_dir=str(run_dir), overrides=overrides)


# Inside Model.log, after the model is linked to the run (PENDING) and after its files are uploaded (still PENDING):
# the client call named runs, then the job dies, for the named export only
INSIDE_EXPORT = ("from mlflow.tracking import MlflowClient\n"
                 "real = getattr(MlflowClient, {call!r})\n"
                 "def dying(self, *a, **k):\n"
                 "    out = real(self, *a, **k)\n"
                 "    model_id = k['models'][0].model_id if 'models' in k else a[0]\n"
                 "    if self.get_logged_model(model_id).name == {name!r}:\n"
                 "        os._exit(137)\n"
                 "    return out\n"
                 "setattr(MlflowClient, {call!r}, dying)")


@pytest.mark.parametrize("name, call", [("pretrained_policy", "log_outputs"), ("policy", "log_model_artifacts")])
def test_a_kill_inside_a_policy_export_leaves_a_ready_model_that_loads_after_the_rerun(tmp_path, name, call):
    import mlflow

    overrides = [*SMOKE, "schedule.online_steps=100", "progress=false", "mlflow.system_metrics=false",
                 f"mlflow_experiment=o2o-export-kill-{name}-{call}"]
    killed_then_rerun(INSIDE_EXPORT.format(call=call, name=name), tmp_path, overrides)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (done,) = client.search_runs([client.get_experiment_by_name(overrides[-1].split("=")[1]).experiment_id])
    assert done.info.status == "FINISHED"
    models = client.search_logged_models(experiment_ids=[done.info.experiment_id],
                                         filter_string=f"source_run_id = '{done.info.run_id}'")
    assert sorted((m.name, str(m.status)) for m in models) == [("policy", "READY"), ("pretrained_policy", "READY")]
    policy = mlflow.pyfunc.load_model(f"runs:/{done.info.run_id}/{name}")
    assert policy.predict(np.zeros((1, 6), np.float32)).shape == (1, 2)


@pytest.mark.parametrize("window, kill", [
    ("right after the MLflow run is created", "pipeline._record_run = lambda *a, **k: os._exit(137)"),
    ("after the params, before the run folder records the run",
     "pipeline.log_dataset = lambda *a, **k: os._exit(137)"),
])
def test_a_kill_while_the_run_is_created_leaves_no_orphan_and_no_run_without_params(tmp_path, window, kill):
    experiment = f"o2o-create-kill-{abs(hash(window))}"
    overrides = [*SMOKE, "schedule.online_steps=50", "progress=false", "mlflow.log_models=false",
                 f"mlflow_experiment={experiment}"]
    killed_then_rerun(kill, tmp_path, overrides)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert sorted(r.info.status for r in runs) == ["FAILED", "FINISHED"]  # none left RUNNING
    (orphan,) = [r for r in runs if r.info.status == "FAILED"]
    assert orphan.data.tags["failure"].startswith("orphaned")
    (done,) = [r for r in runs if r.info.status == "FINISHED"]
    assert (tmp_path / "mlflow_run_id").read_text().strip() == done.info.run_id
    assert {"data.ref_min_score", "data.transitions"} <= set(done.data.params)
    assert "resolved_config.yaml" in [a.path for a in client.list_artifacts(done.info.run_id)]


def test_a_failure_before_the_training_loop_ends_the_run_failed_with_its_reason(tmp_path, monkeypatch):
    from o2o import pipeline, run

    def broken(*args, **kwargs):
        raise RuntimeError("the store refused the dataset")

    monkeypatch.setattr(pipeline, "log_dataset", broken)
    overrides = [*SMOKE, "progress=false", "mlflow.log_models=false", "mlflow_experiment=o2o-early-failure"]
    with pytest.raises(RuntimeError):
        run(algo="calql", run_dir=str(tmp_path), overrides=overrides)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    (failed,) = client.search_runs([client.get_experiment_by_name("o2o-early-failure").experiment_id])
    assert failed.info.status == "FAILED"
    assert failed.data.tags["failure"] == "RuntimeError: the store refused the dataset"


class _RunsCode:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_would_run_code_is_refused_and_runs_nothing(tmp_path):
    """Checkpoints are read by torch's weights-only unpickler with numpy's array types allowed and nothing else."""
    from o2o.checkpoints import Checkpoints
    from o2o.errors import CheckpointError

    (tmp_path / "checkpoints").mkdir()
    marker = tmp_path / "ran"
    torch.save({"stage": "offline", "agent": _RunsCode(marker)}, tmp_path / "checkpoints" / "latest.pt")
    with pytest.raises(CheckpointError, match="cannot be read"):
        Checkpoints(tmp_path).load()
    assert not marker.exists()


def test_a_refused_resume_names_what_differs():
    from o2o.pipeline import config_difference

    run = {"seed": 0, "algo": {"lr": 0.001, "hidden": [256, 256]}, "gone": 1}
    assert config_difference(run, {"seed": 0, "algo": {"lr": 0.001, "hidden": [256, 256]}, "gone": 1}) == ""
    assert config_difference(run, {"seed": 0, "algo": {"lr": 0.0003, "hidden": [256, 256]}, "new": 2}) == (
        "algo.lr: 0.001 in the run, 0.0003 now; gone: 1 in the run, absent now; new: absent in the run, 2 now")
    many = {"a": 1, "b": 1, "c": 1, "d": 1, "e": 1}
    assert config_difference(many, {k: 2 for k in many}).endswith("; and 2 more")
