"""Threads chosen from the update's size and the free cores, kept right while training; the choice is recorded."""
import os

import pytest
import torch
from mlflow.tracking import MlflowClient

from o2o import runtime
from o2o.runtime import SMALL_UPDATE, ThreadGovernor, choose_threads

CPU = torch.device("cpu")
PAPER = (256, [256, 256, 256])  # batch, critic widths: door's Cal-QL critic


@pytest.fixture
def machine(monkeypatch):
    """A machine with 4 usable cores and a settable load."""
    state = {"load": 0.0}
    monkeypatch.setattr(runtime, "usable_cores", lambda: 4)
    monkeypatch.setattr(os, "getloadavg", lambda: (state["load"], 0.0, 0.0))
    return state


def test_small_updates_and_gpu_runs_get_one_thread(machine):
    assert choose_threads(32, [32, 32], CPU)[0] == 1  # the smoke preset
    assert choose_threads(256, [64, 64], CPU)[0] == 1  # the quickstart preset
    assert 256 * 64 ** 2 < SMALL_UPDATE <= 256 * 128 ** 2
    assert choose_threads(*PAPER, torch.device("cuda"))[0] == 1


def test_large_updates_get_the_free_cores_and_one_thread_when_they_are_busy(machine):
    assert choose_threads(*PAPER, CPU) == (4, "4 usable cores, 4 free")
    machine["load"] = 2.2
    assert choose_threads(*PAPER, CPU)[0] == 2
    machine["load"] = 3.6
    threads, why = choose_threads(*PAPER, CPU)
    assert threads == 1 and "busy" in why


def test_the_governor_follows_the_load_while_training(machine, monkeypatch):
    clock = {"now": 0.0}
    monkeypatch.setattr(runtime.time, "monotonic", lambda: clock["now"])
    changes = []
    before = torch.get_num_threads()
    try:
        governor = ThreadGovernor(*PAPER, threads=4, on_change=lambda n, why: changes.append(n))
        machine["load"] = 4.0
        governor.tick()  # not yet time to look
        assert governor.threads == 4 and changes == []
        clock["now"] = runtime.RECHECK_SECONDS + 1
        governor.tick()
        assert governor.threads == 1 and torch.get_num_threads() == 1 and changes == [1]
        machine["load"], clock["now"] = 0.5, 2 * runtime.RECHECK_SECONDS + 2
        governor.tick()
        assert governor.threads == 4 and changes == [1, 4]
    finally:
        torch.set_num_threads(before)


def test_usable_cores_follow_the_cpu_affinity():
    assert 1 <= runtime.usable_cores() <= len(os.sched_getaffinity(0))


def test_a_run_records_its_thread_count_and_why(tmp_path):
    from o2o import run

    before = torch.get_num_threads()
    try:
        run(run_dir=str(tmp_path / "auto"), overrides=["experiment=smoke", "env.dataset.collector.steps=1500",
                                                       "mlflow_experiment=o2o-threads", "schedule.online_steps=100"])
        assert torch.get_num_threads() == 1
        run(run_dir=str(tmp_path / "set"), overrides=["experiment=smoke", "env.dataset.collector.steps=1500",
                                                      "mlflow_experiment=o2o-threads", "schedule.online_steps=100",
                                                      "threads=2", "precision=auto"])
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(before)
    client = MlflowClient(os.environ["MLFLOW_TRACKING_URI"])
    runs = client.search_runs([client.get_experiment_by_name("o2o-threads").experiment_id], order_by=["start_time"])
    tags = [(r.data.tags["torch_threads"], r.data.tags["torch_threads_reason"]) for r in runs]
    assert tags[0][0] == "1" and "small update" in tags[0][1]
    assert tags[1] == ("2", "set by threads=")
    assert runs[0].data.tags["precision_used"] == "fp32" and runs[0].data.params["precision"] == "auto"  # the default
    assert runs[1].data.params["precision"] == "auto"
    assert runs[1].data.tags["precision_used"] == "fp32"  # auto keeps small updates in fp32
    assert runs[0].data.tags["machines"] == runtime.machine() and "cores" in runtime.machine()


def test_a_resumed_run_keeps_every_machine_it_ran_on():
    """RunState.machines: this machine once; a checkpoint from before runs recorded it says so first."""
    from o2o.run_state import NOT_RECORDED, RunState, add_machine

    fresh = RunState(config={}, run_id="r")
    assert add_machine(fresh, "A, 2 cores", resumed=False) == "A, 2 cores"
    again = RunState.from_dict(fresh.to_dict())
    assert add_machine(again, "A, 2 cores", resumed=True) == "A, 2 cores"
    assert add_machine(again, "B, 8 cores", resumed=True) == "A, 2 cores; B, 8 cores"
    old = {k: v for k, v in fresh.to_dict().items() if k != "machines"}  # a checkpoint written before the field
    assert add_machine(RunState.from_dict(old), "B, 8 cores", resumed=True) == f"{NOT_RECORDED}; B, 8 cores"


def test_auto_precision_is_bf16_only_where_the_hardware_computes_it(monkeypatch):
    from o2o.runtime import choose_precision

    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: True)
    assert choose_precision("auto", CPU, *PAPER)[0] == "bf16"
    assert choose_precision("auto", CPU, 32, [32, 32])[0] == "fp32"  # autocast would cost more than it saves
    monkeypatch.setattr(runtime, "cpu_has_native_bf16", lambda: False)
    assert choose_precision("auto", CPU, *PAPER)[0] == "fp32"
    assert choose_precision("bf16", CPU, *PAPER) == ("bf16", "set by precision=")
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert choose_precision("auto", torch.device("cuda"), 32, [32])[0] == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    assert choose_precision("auto", torch.device("cuda"), *PAPER)[0] == "fp32"


def test_a_resumed_run_keeps_the_precision_it_started_in(tmp_path):
    """precision=auto chooses per machine; a run resumed on another machine must not switch from bf16 to fp32 (or back)
    half-way, so the precision its checkpoint records wins over this machine's choice."""
    from conftest import compose
    from o2o import run
    from o2o.checkpoints import Checkpoints
    from o2o.config import validate
    from o2o.runtime import setup_runtime

    run(run_dir=str(tmp_path / "r"), overrides=["experiment=smoke", "env.dataset.collector.steps=1500",
                                               "mlflow_experiment=o2o-precision", "schedule.online_steps=100"])
    assert Checkpoints(tmp_path / "r").load().precision == "fp32"  # the choice, recorded in the run's state
    cfg = validate(compose(["experiment=smoke"]))  # a small update: this machine's own choice is fp32
    assert setup_runtime(cfg).precision == "fp32"
    kept = setup_runtime(cfg, started_precision="bf16")
    assert kept.precision == "bf16" and "kept on resuming" in kept.precision_why and "fp32" in kept.precision_why
    explicit = validate(compose(["experiment=smoke", "precision=fp32"]))
    assert setup_runtime(explicit, started_precision="bf16").precision == "fp32"  # an explicit setting is the setting
