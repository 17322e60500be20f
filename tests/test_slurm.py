"""Sweeps on a real single-node SLURM cluster (scripts/slurm_cluster.sh start) through submitit."""
import os
import shutil
import subprocess
import time

import pytest
from mlflow.tracking import MlflowClient

from conftest import ROOT, SMOKE, exploding_algorithm


def cluster_reason():
    if not shutil.which("sbatch"):
        return "SLURM is not installed (scripts/slurm_cluster.sh install)"
    if not os.environ.get("SLURM_CONF"):
        return "no SLURM cluster: run scripts/slurm_cluster.sh start and export SLURM_CONF"
    if subprocess.run(["sinfo", "-h"], capture_output=True, timeout=30).returncode != 0:
        return f"sinfo does not answer for SLURM_CONF={os.environ['SLURM_CONF']}"
    return None


pytestmark = pytest.mark.skipif(cluster_reason() is not None, reason=str(cluster_reason()))
SLURM = ["hydra/launcher=submitit_slurm", "hydra.launcher.cpus_per_task=1", "hydra.launcher.mem_gb=2"]


def sweep(args, sweep_dir):
    cmd = [os.sys.executable, str(ROOT / "src" / "main.py"), "-m", *SLURM, *args, f"hydra.sweep.dir={sweep_dir}"]
    return cmd


def runs_in(experiment):
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    exp = client.get_experiment_by_name(experiment)
    return client, client.search_runs([exp.experiment_id])


def test_sweep_of_two_algorithms_and_two_seeds(tmp_path):
    proc = subprocess.run(sweep(["algo=calql,cql", "seed=0,1", *SMOKE, "mlflow_experiment=o2o-slurm"], tmp_path / "sweep"),
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    client, runs = runs_in("o2o-slurm")
    parents = [r for r in runs if r.data.tags.get("sweep") == "true"]
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(parents) == 1 and parents[0].info.status == "FINISHED"
    assert len(children) == 4
    assert {r.data.tags["mlflow.parentRunId"] for r in children} == {parents[0].info.run_id}
    assert {(r.data.tags["algo"], r.data.tags["seed"]) for r in children} == {
        ("calql", "0"), ("calql", "1"), ("cql", "0"), ("cql", "1")}
    for r in children:
        assert r.info.status == "FINISHED" and "seed=" in r.data.tags["overrides"]
        assert {"offline/train/critic_loss", "offline/eval/success_rate", "online/train/critic_loss",
                "online/eval/success_rate", "online/cumulative_regret"} <= set(r.data.metrics)


def test_preempted_job_is_requeued_and_finishes_in_one_run(tmp_path):
    args = ["algo=calql", "seed=7", *SMOKE, "mlflow_experiment=o2o-preempt", "schedule.offline_steps=300",
            "schedule.online_steps=1500", "schedule.checkpoint_interval=50", "schedule.log_interval=10",
            "domain.eval_episodes=1", "progress=false"]
    head = subprocess.Popen(sweep(args, tmp_path / "sweep"), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    deadline, job = time.time() + 300, None
    while time.time() < deadline and head.poll() is None:
        progress = list((tmp_path / "sweep").glob("*/checkpoints/progress.json"))
        if progress and '"online"' in progress[0].read_text():
            # this sweep's own job (submitit's folder per job id), not whatever else the queue holds
            job = sorted(p.name for p in (tmp_path / "sweep" / ".submitit").iterdir() if p.is_dir())
            break
        time.sleep(0.2)
    assert job, "the job never reached online fine-tuning"
    subprocess.run(["scancel", "--signal=USR2", job[0]], check=True)
    out, _ = head.communicate(timeout=600)
    assert head.returncode == 0, out[-4000:]
    logs = "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*.err"))
    logs += "".join(p.read_text() for p in (tmp_path / "sweep" / ".submitit").rglob("*.out"))
    assert "preempted" in logs and "resuming" in logs
    client, runs = runs_in("o2o-preempt")
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    assert len(children) == 1 and children[0].info.status == "FINISHED"
    steps = [m.step for m in client.get_metric_history(children[0].info.run_id, "online/train/episode_return")]
    assert steps == sorted(set(steps)) and steps[-1] == 1500  # continuous, no step logged twice


def test_failed_job_is_reported_and_the_others_kept(tmp_path):
    """One job of the sweep fails inside its SLURM job (its algorithm raises on the first update, which no check
    before the sweep can see): it is named, the other job's run finishes, the parent run ends FAILED."""
    env = {**os.environ, "O2O_CONFIG_PATH": str(exploding_algorithm(tmp_path / "conf"))}
    proc = subprocess.run(sweep(["algo=calql,exploding", *SMOKE, "mlflow_experiment=o2o-failing",
                                 "schedule.online_steps=100"], tmp_path / "sweep"),
                          capture_output=True, text=True, timeout=600, env=env)
    output = proc.stdout + proc.stderr
    assert proc.returncode != 0
    assert "job failed: algo=exploding" in output and "1 of 2 jobs failed" in output, output[-3000:]
    client, runs = runs_in("o2o-failing")
    parent = next(r for r in runs if r.data.tags.get("sweep") == "true")
    assert parent.info.status == "FAILED" and "algo=exploding" in parent.data.tags["failed_jobs"]
    finished = [r for r in runs if r.data.tags.get("mlflow.parentRunId") and r.info.status == "FINISHED"]
    assert len(finished) == 1 and finished[0].data.tags["algo"] == "calql"


def test_a_job_cancelled_from_outside_is_named_with_slurms_state_and_the_others_are_waited_for(tmp_path):
    """scancel (as the OOM killer, a lost node or an administrator) leaves a job without a result: submitit's launcher
    would raise at it and stop waiting for the jobs after it. Here it is one failed job, named with its SLURM state."""
    args = ["algo=calql", "schedule.offline_steps=100000,40", *SMOKE, "mlflow_experiment=o2o-cancelled",
            "schedule.online_steps=0", "progress=false"]
    head = subprocess.Popen(sweep(args, tmp_path / "sweep"), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    deadline, long_job = time.time() + 300, None
    while time.time() < deadline and head.poll() is None and long_job is None:
        started = [p.parent for p in (tmp_path / "sweep").glob("*offline_steps=100000*/mlflow_run_id")]
        submitit = tmp_path / "sweep" / ".submitit"
        jobs = sorted(p.name for p in submitit.iterdir() if p.is_dir() and p.name.endswith("_0")) if started else []
        long_job = jobs[0] if jobs else None
        time.sleep(0.2)
    assert long_job, "the long job never started"
    subprocess.run(["scancel", long_job], check=True)
    out, err = head.communicate(timeout=600)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    assert head.returncode == 2 and len(errors) == 1 and "Traceback" not in err, err[-3000:]
    assert f"JobLeftNoResult: job {long_job} ended without a result (SLURM state CANCELLED" in errors[0], errors[0]
    client, runs = runs_in("o2o-cancelled")
    finished = [r for r in runs if r.data.tags.get("mlflow.parentRunId") and r.info.status == "FINISHED"]
    assert len(finished) == 1 and finished[0].data.params["schedule.offline_steps"] == "40"
