"""Time to load a 1M-transition Minari dataset into arrays and compute its returns-to-go.

    python scripts/bench_load.py --episodes 5000 --length 200

Writes a synthetic dataset (door-sized observations and actions) under
``$MINARI_DATASETS_PATH`` (default: a temporary folder) the first time.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
import warnings

import numpy as np


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--episodes", type=int, default=5000)
    parser.add_argument("--length", type=int, default=200)
    args = parser.parse_args()
    os.environ.setdefault("MINARI_DATASETS_PATH", tempfile.mkdtemp(prefix="o2o-bench-"))

    import minari
    from minari.data_collector import EpisodeBuffer

    from o2o.data.build.adroit import make_adroit
    from o2o.data.dataset import episode_slices, load_minari
    from o2o.returns import returns_to_go

    dataset_id = f"o2o-bench/door/synthetic-{args.episodes}x{args.length}-v0"
    if dataset_id not in minari.list_local_datasets():
        rng = np.random.default_rng(0)
        start = time.perf_counter()
        buffers = [EpisodeBuffer(id=i, observations=rng.normal(size=(args.length + 1, 39)).astype(np.float32),
                                 actions=rng.uniform(-1, 1, (args.length, 28)).astype(np.float32),
                                 rewards=list(rng.normal(size=args.length)), terminations=[False] * args.length,
                                 truncations=[False] * (args.length - 1) + [True],
                                 infos={"success": rng.random(args.length + 1) < 0.1})
                   for i in range(args.episodes)]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            minari.create_dataset_from_buffers(dataset_id, buffers, env=make_adroit("door").spec,
                                               algorithm_name="synthetic", author="o2o")
        print(f"wrote {dataset_id} in {time.perf_counter() - start:.1f} s")
    start = time.perf_counter()
    data = load_minari(dataset_id, [], download=False)
    loaded = time.perf_counter()
    g = returns_to_go(data.rewards * 10 + 5, data.episode_ends, 0.99, fail_reward=-5.0)
    done = time.perf_counter()
    print(f"{len(data)} transitions in {len(episode_slices(data.episode_ends))} episodes: "
          f"load {loaded - start:.2f} s, returns-to-go {done - loaded:.2f} s, total {done - start:.2f} s "
          f"({g.shape[0]} returns)")


if __name__ == "__main__":
    main()
