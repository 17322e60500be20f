"""Launchers that report every failed job with its overrides and let the sweep finish (Hydra needs launchers in
``hydra_plugins``): Hydra's basic one (jobs one after another in this process, the default) and submitit's.

Selected by ``hydra/launcher=serial`` (the default), ``submitit_slurm`` or ``submitit_local`` (``conf/hydra/launcher/``).
"""
from __future__ import annotations

from typing import Sequence

from hydra._internal.core_plugins.basic_launcher import BasicLauncher
from hydra.core.utils import JobReturn
from hydra_plugins.hydra_submitit_launcher import submitit_launcher

from o2o.launchers import jobs_that_settle, report_failures


class _ReportingLauncher:
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        results = super().launch(job_overrides, initial_job_idx)
        report_failures(job_overrides, results)
        return results


class _SettlingLauncher(_ReportingLauncher):
    def launch(self, job_overrides: Sequence[Sequence[str]], initial_job_idx: int) -> Sequence[JobReturn]:
        with jobs_that_settle():  # a job killed from outside is reported with the others, which are waited for
            return super().launch(job_overrides, initial_job_idx)


class SlurmLauncher(_SettlingLauncher, submitit_launcher.SlurmLauncher):
    pass


class LocalLauncher(_SettlingLauncher, submitit_launcher.LocalLauncher):
    pass


class SerialLauncher(_ReportingLauncher, BasicLauncher):
    pass
