"""Sweeps: one MLflow parent run per sweep with a summary of its children, and the report of failed jobs.

The launchers themselves live in ``hydra_plugins.o2o_launcher`` (Hydra looks
for launchers there) and are selected by ``hydra/launcher=submitit_slurm`` or
``submitit_local``. A requeued or preempted job runs the same task again in the
same run directory and resumes from its checkpoint (``o2o.checkpoints``).
"""
from __future__ import annotations

import atexit
import contextlib
import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Sequence

from hydra.core.utils import JobReturn, JobStatus, filter_overrides
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from o2o.errors import NoMatchingRuns
from o2o.tracking import (PARENT_RUN_ENV, PLANNED_JOBS_TAG, PLANNED_RUNS_TAG, PRESET_TAG, default_tracking_uri,
                          ensure_experiment, open_store, store_lock)

log = logging.getLogger("o2o")
MAX_NOTE = 7000  # MLflow tag values hold 8000 characters


def _parent_client():
    from mlflow.tracking import MlflowClient

    run_id = os.environ.get(PARENT_RUN_ENV)
    return (MlflowClient(default_tracking_uri()), run_id) if run_id else (None, None)


def planned_jobs(config: DictConfig) -> list[str] | None:
    """The sweep's jobs as Hydra's basic sweeper expands them (``hydra.sweeper.params``, then the command line's
    overrides, unresolved as Hydra hands them over), each as its overrides that change what it computes
    (o2o.archive.computing_overrides), sorted, once each (jobs that differ only in bookkeeping keys such as
    ``threads`` compute the same run); None for another sweeper, or a sweep that Hydra expands only with its config
    loader (``glob(...)``)."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    from o2o.archive import computing_overrides

    if not str(config.hydra.sweeper.get("_target_", "")).endswith(".BasicSweeper"):
        return None
    params = [f"{key}={value}" for key, value in (config.hydra.sweeper.get("params") or {}).items()]
    try:
        task = OmegaConf.to_container(config.hydra.overrides.task, resolve=False)  # ${...} as the jobs get it
        parsed = OverridesParser.create().parse_overrides([*params, *task])
        batches = BasicSweeper.split_arguments(parsed, None)
    except (HydraException, ValueError, TypeError):
        return None
    jobs = (" ".join(sorted(computing_overrides(" ".join(job)))) for batch in batches for job in batch)
    return list(dict.fromkeys(jobs))


def plan_tags(config: DictConfig) -> dict[str, str]:
    """The parent run's record of what the sweep runs: the count, and the jobs (a JSON list) where they fit in an
    MLflow tag."""
    import json

    jobs = planned_jobs(config)
    if jobs is None:
        return {}
    listed = json.dumps(jobs)
    return {PLANNED_RUNS_TAG: str(len(jobs)), **({PLANNED_JOBS_TAG: listed} if len(listed) <= MAX_NOTE else {})}


FAILED_JOBS: list[tuple[str, BaseException]] = []  # this sweep's failed jobs (overrides, error), for o2o.cli.main
LAUNCHED_JOBS: list[str] = []


class JobLeftNoResult(RuntimeError):
    """A submitit job that ended without a Hydra result: killed from outside, exited past Hydra, or failed outside
    its task."""


class _SettledJob:
    """A submitit job whose ``results()`` reads as a failed Hydra job when the job left no result, instead of
    raising; everything else is the job's own."""

    def __init__(self, job):
        self._job = job

    def __getattr__(self, name):
        return getattr(self._job, name)

    def results(self):
        import submitit

        try:
            return self._job.results()
        except submitit.core.utils.FailedJobError as failed:  # outside Hydra's task handler (config loading,
            # callbacks); a kind of the next. Its message is the trace between two dashed lines, then the log paths.
            parts = str(failed).split("-" * 22)
            trace = [line.strip() for line in (parts[1] if len(parts) > 2 else "").splitlines() if line.strip()]
            error = JobLeftNoResult(f"job {self._job.job_id} failed outside its task: "
                                    f"{trace[-1] if trace else '(no trace)'}; its logs are in {self._job.paths.folder}")
        except submitit.core.utils.UncompletedJobError:
            # SLURM's state names the cause (CANCELLED, OUT_OF_MEMORY, NODE_FAIL...); a local job's only says it ended
            state = f" (SLURM state {self._job.state})" if isinstance(self._job, submitit.SlurmJob) else ""
            error = JobLeftNoResult(
                f"job {self._job.job_id} ended without a result{state}: killed from outside (a signal, the OOM "
                f"killer, scancel, a lost node) or exited past Hydra (SystemExit); its logs are in "
                f"{self._job.paths.folder}")
        return [JobReturn(status=JobStatus.FAILED, _return_value=error)]


@contextlib.contextmanager
def jobs_that_settle():
    """While hydra-submitit's launcher waits for its jobs, one job that leaves no result reads as that job failed.

    The launcher waits on each job's result in turn and raises at the first job that left none: the jobs after it
    would be left running unwatched, and the sweep would end in a traceback without its failures reported.
    """
    import submitit

    executor_class, map_array = submitit.AutoExecutor, submitit.AutoExecutor.map_array
    own = vars(executor_class).get("map_array")  # None: inherited from submitit's Executor

    def settled_map_array(executor, fn, *iterables):
        return [_SettledJob(job) for job in map_array(executor, fn, *iterables)]

    executor_class.map_array = settled_map_array
    try:
        yield
    finally:
        if own is None:
            del executor_class.map_array
        else:
            executor_class.map_array = own


def report_failures(job_overrides: Sequence[Sequence[str]], results: Sequence[JobReturn]) -> None:
    """Log every failed job with its overrides, mark the sweep's parent run failed, and let the sweep go on: each
    failed job's result reads as done to Hydra's sweeper (which would otherwise raise the first error with its
    traceback), and the command ends with one line for them (o2o.cli.main)."""
    LAUNCHED_JOBS.extend(" ".join(filter_overrides(o)) for o in job_overrides)
    failed = [(overrides, r) for overrides, r in zip(job_overrides, results) if r.status == JobStatus.FAILED]
    if not failed:
        return
    for overrides, r in failed:
        FAILED_JOBS.append((" ".join(filter_overrides(overrides)), r._return_value))
        r.status, r._return_value = JobStatus.COMPLETED, None
    for overrides, error in FAILED_JOBS[-len(failed):]:
        log.error("job failed: %s -> %s: %s", overrides, type(error).__name__, error)
    log.error("%d of %d jobs failed; the other jobs' results are kept", len(failed), len(results))
    client, parent = _parent_client()
    if client is not None:
        client.set_tag(parent, "failed_jobs", "; ".join(" ".join(filter_overrides(o)) for o, _ in failed)[:5000])
        client.set_terminated(parent, status="FAILED")


class MlflowSweepCallback(Callback):
    """One parent MLflow run per sweep; every job's run becomes its child.

    The head process creates the store and the parent run before any job
    starts (concurrent first-time creation of a sqlite store races) and hands
    the parent's id to the jobs through the environment, which local
    processes and sbatch jobs inherit.
    """

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        uri = default_tracking_uri()
        client = open_store(uri)
        with store_lock(uri):
            experiment_id = ensure_experiment(client, config.mlflow_experiment, uri)
        overrides = " ".join(config.hydra.overrides.task) or "(defaults)"
        sweep_dir = str(config.hydra.sweep.dir)
        earlier = client.search_runs([experiment_id], f"tags.sweep = 'true' and tags.sweep_dir = '{sweep_dir}'",
                                     order_by=["attributes.start_time DESC"], max_results=1)
        tags = {"overrides": overrides, **plan_tags(config)}
        if earlier:  # the same sweep folder again: its jobs resume, so they stay children of the same parent
            run_id = earlier[0].info.run_id
            client.update_run(run_id, status="RUNNING")
            for stale in {PLANNED_RUNS_TAG, PLANNED_JOBS_TAG} & set(earlier[0].data.tags) - set(tags):
                client.delete_tag(run_id, stale)  # this part's plan replaces the last part's, or it has none
            for key, value in tags.items():
                client.set_tag(run_id, key, value)
            log.info("MLflow parent run %s continues for this sweep folder (store %s)", run_id, uri)
        else:
            run_id = client.create_run(experiment_id, run_name=f"sweep-{time.strftime('%Y-%m-%d_%H-%M-%S')}",
                                       tags={"sweep": "true", "sweep_dir": sweep_dir, **tags}).info.run_id
            log.info("MLflow parent run %s for this sweep (store %s)", run_id, uri)
        os.environ[PARENT_RUN_ENV] = run_id
        # a sweep whose head process stops before on_multirun_end (a job's error that the basic launcher raises, an
        # interrupt) must not leave its parent RUNNING
        atexit.register(_end_parent_unless_ended, uri, run_id)

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        client, parent = _parent_client()
        if client is None:
            return
        try:
            summarize_sweep(client, parent, config.mlflow_experiment, Path(config.hydra.sweep.dir) / "summary")
        except Exception as err:  # a summary that cannot be written must not hide the jobs' own results
            log.warning("sweep summary not written: %s: %s", type(err).__name__, err)
        if client.get_run(parent).info.status == "RUNNING":
            client.set_terminated(parent, status="FINISHED")


def _end_parent_unless_ended(uri: str, run_id: str) -> None:
    try:
        client = open_store(uri)
        if client.get_run(run_id).info.status == "RUNNING":
            client.set_tag(run_id, "failure", "the sweep stopped before its end")
            client.set_terminated(run_id, status="FAILED")
    except Exception as err:  # at exit, a store that cannot be reached is said, not raised
        log.warning("the sweep's parent run %s could not be ended: %s", run_id, str(err).splitlines()[0][:200])


PRESETS_THAT_LEARN_NOTHING = ("smoke",)  # conf/experiment/smoke.yaml: seconds of tiny networks; "It learns nothing."
# (a run at its size under another preset, as a study's --budget smoke runs, learns nothing either: o2o.config_sources.smoke_sized)


def best_by_env(records: list) -> dict[str, tuple]:
    """Each env's best finished child by its paper metric after fine-tuning (after pre-training for runs without
    fine-tuning): env -> (record, score)."""
    from o2o import metrics as M

    best: dict[str, tuple] = {}
    for r in records:
        score = r.last(r.score_key(M.ONLINE))
        if math.isnan(score):
            score = r.last(r.score_key(M.OFFLINE))
        if not math.isnan(score) and (r.env not in best or score > best[r.env][1]):
            best[r.env] = (r, score)
    return best


def summarize_sweep(client, parent: str, experiment: str, out_dir: Path) -> None:
    """The parent run at a glance: the comparison table of its finished children (as artifacts and as the run's
    description) and, per env, the best child by the paper's metric (tags ``best_run.<env>``, metrics
    ``best/<env>/<metric>``)."""
    from o2o.report import build_filter, write_report
    from o2o.config_sources import smoke_sized

    try:
        result = write_report(client, experiment, build_filter(parent=parent), out_dir, log_to_mlflow=False)
    except NoMatchingRuns:
        client.set_tag(parent, "mlflow.note.content", "No child run finished: nothing to compare.")
        return
    for path in result["files"]:
        client.log_artifact(parent, str(path), "summary")
    lines = []
    children = [client.get_run(r.run_id).data for r in result["records"]]
    presets = {c.tags.get(PRESET_TAG) for c in children}
    if presets <= set(PRESETS_THAT_LEARN_NOTHING):
        lines.append(f"No best run: every run used a preset that learns nothing ({', '.join(sorted(presets))})")
    elif all(smoke_sized(c.params) for c in children):
        lines.append("No best run: every run is at the size of the smoke preset, which learns nothing "
                     f"({', '.join(sorted(map(str, presets)))} with its values)")
    for env, (record, score) in sorted(best_by_env(result["records"]).items()) if not lines else ():
        name = client.get_run(record.run_id).info.run_name
        client.set_tag(parent, f"best_run.{env}", record.run_id)
        client.log_metric(parent, f"best/{env}/{record.metric}", score)
        lines.append(f"Best on {env}: {name} ({record.run_id}), {record.metric} {score:.3f}")
    table = (out_dir / "table.md").read_text()
    note = "\n".join(lines) + "\n\n" + table
    if len(note) > MAX_NOTE:
        note = note[:MAX_NOTE] + "\n\n(cut here: the whole table is the artifact summary/table.md)"
    client.set_tag(parent, "mlflow.note.content", note)
    log.info("sweep summary: %s; table and plots in %s and in the parent run's summary/ artifacts",
             "; ".join(lines), out_dir)
