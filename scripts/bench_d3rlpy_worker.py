"""d3rlpy's CalQL update, timed on request: run by ``scripts/bench_update.py --against-d3rlpy`` in d3rlpy's own
environment (it pins its own gymnasium), never imported by o2o.

Reads a JSON config line, builds CalQL at that configuration, then answers each line ``N`` on stdin with the
seconds N updates took. The batch is built once on the device, as o2o's benchmark samples preallocated tensors:
both sides time the update, not data loading.
"""
import json
import sys
import time

import d3rlpy
import torch
from d3rlpy.models.encoders import VectorEncoderFactory
from d3rlpy.torch_utility import TorchMiniBatch


def main() -> None:
    cfg = json.loads(sys.stdin.readline())
    torch.set_num_threads(cfg["threads"])
    torch.manual_seed(0)
    config = d3rlpy.algos.CalQLConfig(
        batch_size=cfg["batch_size"], n_action_samples=cfg["n_actions"], max_q_backup=True, n_critics=2,
        conservative_weight=cfg["cql_weight"], alpha_learning_rate=0.0,  # a fixed CQL weight, as o2o's non-Lagrange CQL
        actor_encoder_factory=VectorEncoderFactory(cfg["actor_hidden"]),
        critic_encoder_factory=VectorEncoderFactory(cfg["critic_hidden"]))
    algo = config.create(device="cpu:0")
    algo.create_impl((cfg["obs_dim"],), cfg["act_dim"])
    b, o, a = cfg["batch_size"], cfg["obs_dim"], cfg["act_dim"]
    batch = TorchMiniBatch(observations=torch.randn(b, o), actions=torch.rand(b, a) * 2 - 1, rewards=torch.randn(b, 1),
                           next_observations=torch.randn(b, o), next_actions=torch.rand(b, a) * 2 - 1,
                           returns_to_go=torch.randn(b, 1), terminals=torch.zeros(b, 1), intervals=torch.ones(b, 1),
                           device="cpu:0")
    step = 0
    print(json.dumps({"d3rlpy": d3rlpy.__version__, "torch": torch.__version__}), flush=True)
    for line in sys.stdin:
        n = int(line)
        start = time.perf_counter()
        for _ in range(n):
            algo.impl.update(batch, step)  # returns floats: d3rlpy syncs with the host every update
            step += 1
        print(time.perf_counter() - start, flush=True)


if __name__ == "__main__":
    main()
