"""The terminal talks: bars that move every step, log lines above them, and a closing summary of where the run went."""
from conftest import SMOKE


def test_bars_move_every_step_and_the_run_ends_with_where_it_went(tmp_path, monkeypatch, capsys):
    from o2o import run
    from o2o.stages import common

    bars = []

    class RecordingBar:
        def __init__(self, total, initial, desc, **kwargs):
            self.desc, self.n, self.updates = desc, initial, []
            bars.append(self)

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

        def update(self, n):
            self.n += n
            self.updates.append(n)

        def set_postfix(self, **kwargs):
            self.postfix = kwargs

    monkeypatch.setattr(common, "tqdm", RecordingBar)
    run(algo="calql", run_dir=str(tmp_path), overrides=[*SMOKE, "mlflow_experiment=o2o-terminal",
                                                         "schedule.online_steps=120", "progress=true"])
    offline, online = bars
    assert offline.desc == "offline pre-training" and offline.updates == [1] * 40  # every gradient step
    assert online.desc == "online fine-tuning" and online.updates == [1] * 120  # every env step
    assert "regret" in online.postfix
    out = capsys.readouterr().out
    assert "calql on pointmaze_umaze, seed 0: offline/success_rate" in out and f"run folder  {tmp_path}" in out
    assert "mlflow ui --backend-store-uri" in out and "o2o-report --experiment o2o-terminal" in out


def test_a_smoke_run_prints_no_third_party_notice_and_logs_mlflows_routine_lines_to_its_file(tmp_path, main_py):
    import subprocess

    done = subprocess.run([*main_py, *SMOKE, "mlflow_experiment=o2o-quiet", "progress=false",
                           f"hydra.run.dir={tmp_path}"], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    terminal = done.stdout + done.stderr
    assert "reward functions were updated" not in terminal  # Gymnasium-Robotics' Adroit-dense notice
    assert " INFO mlflow" not in terminal and "Validating input example" not in terminal
    log = next(tmp_path.glob("*.log")).read_text()
    assert "Validating input example" in log or "system metrics" in log  # kept, in the run's log file
