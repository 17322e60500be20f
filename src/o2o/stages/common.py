"""What the training stages share: metric averaging, progress, checkpoints."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from tqdm.auto import tqdm

from o2o.config import ScheduleConfig
from o2o.tracking import Tracker

log = logging.getLogger("o2o")


class MetricAverager:
    """Sums metric tensors on the device; one host transfer per flush."""

    def __init__(self):
        self._sums: dict[str, torch.Tensor] = {}
        self._count = 0

    def add(self, metrics: dict[str, torch.Tensor]) -> None:
        for key, value in metrics.items():
            value = value.detach().float()
            self._sums[key] = self._sums[key] + value if key in self._sums else value.clone()
        self._count += 1

    def pop_means(self) -> dict[str, float]:
        if not self._count:
            return {}
        keys = list(self._sums)
        values = (torch.stack([self._sums[k] for k in keys]) / self._count).cpu().tolist()
        self._sums, self._count = {}, 0
        return dict(zip(keys, values))


@dataclass
class RunContext:
    """Everything a stage needs besides the agent and its data."""

    tracker: Tracker
    evaluate: Callable[[object], dict]
    schedule: ScheduleConfig
    run_dir: Path
    progress: bool = True

    def progress_bar(self, total: int, desc: str):
        # disable=None: quiet when output is not a terminal
        return tqdm(total=total, desc=desc, disable=None if self.progress else True, dynamic_ncols=True)

    def save_checkpoint(self, agent, name: str, extra: dict | None = None) -> Path:
        """Write atomically: a kill during the write leaves the previous file intact."""
        path = self.run_dir / "checkpoints" / f"{name}.pt"
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".pt.tmp")
        torch.save({**agent.checkpoint(), **(extra or {})}, tmp)
        os.replace(tmp, path)
        return path

    def log_eval(self, phase: str, step: int, results: dict[str, float]) -> None:
        self.tracker.log_metrics({f"{phase}/eval/{k}": v for k, v in results.items()}, step)
        log.info("%s eval @ %d: %s", phase, step, ", ".join(f"{k}={v:.3f}" for k, v in results.items()))
