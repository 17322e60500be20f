"""How a learned V_ref's error against the Monte-Carlo returns falls with fit steps (conf/reference/*.yaml).

    python scripts/fit_reference.py [experiment=study/pointmaze_o2o/cpu ...overrides]

Fits ``reference=regression`` and ``reference=td`` on the configured offline data (two seeds each) and prints the
mean absolute error and the correlation against the returns after 1k, 2.5k, 5k, 10k and 20k steps.
"""
import sys
import time

import torch

from o2o.cli import compose_config
from o2o.config import validate
from o2o.pipeline import load_data, offline_buffer
from o2o.reference import LearnedReference, reference_error

CHECKPOINTS = (1000, 2500, 5000, 10000, 20000)


def main(overrides: list[str]) -> None:
    torch.set_num_threads(1)
    overrides = overrides or ["experiment=study/pointmaze_o2o/cpu"]
    for source in ("regression", "td"):
        cfg = validate(compose_config([*overrides, f"reference={source}"]))
        buffer = offline_buffer(load_data(cfg).offline, cfg, torch.device("cpu"))
        b = buffer.batch()
        for seed in (0, 1):
            reference = LearnedReference(buffer.obs_dim, cfg.reference, cfg.algo.gamma, seed, torch.device("cpu"))
            start, done, points = time.time(), 0, []
            for target in CHECKPOINTS:  # one fit continued in pieces (each piece starts a fresh Adam state)
                cfg.reference.fit_steps = target - done
                reference.fit(b.obs, b.rewards, b.next_obs, b.dones, b.v_ref)
                done = target
                e = reference_error(reference(b.obs), b.v_ref)
                points.append(f"{target}: mae {e['v_ref_mae']:.2f} corr {e['v_ref_corr']:.3f}")
            print(f"{source} seed {seed} ({len(buffer)} transitions, mean |return| {b.v_ref.abs().mean():.1f}): "
                  + "; ".join(points) + f" ({time.time() - start:.0f} s)", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
