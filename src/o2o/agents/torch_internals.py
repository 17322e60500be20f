"""Every private PyTorch setting and function the updates use, each behind one named function.

PyTorch may rename or drop any of these in a release without notice. Each was checked on torch 2.13.0 (what
``.ci/run`` installs); ``tests/test_torch_internals.py`` calls every one and checks its effect, so an upgrade that
removes or changes one fails there by name, not as a silently slower or wrong run. The updates call nothing
private but through this module.
"""
from __future__ import annotations

import torch

CHECKED_ON = ("2.13.0",)


def inductor_calls_eager_rng() -> None:
    """Inductor generates random numbers with eager's generator, so that a compiled update draws what the eager
    one draws (IQL's dropout): ``torch._inductor.config.fallback_random``. Setting an unknown config key raises."""
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True


def allow_recompiles(limit: int) -> None:
    """Dynamo keeps up to ``limit`` graphs per code object (``torch._dynamo.config.recompile_limit``; the default
    8 stops a run that compiles the update for many agents) and 4x that in all."""
    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, limit)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 4 * limit)


def mark_static_address(tensor: torch.Tensor) -> None:
    """A tensor that a CUDA graph mutates in place keeps its address across replays
    (``torch._dynamo.mark_static_address``)."""
    torch._dynamo.mark_static_address(tensor)


def record_optimizer_step(optimizer: torch.optim.Optimizer) -> None:
    """What ``Optimizer.step`` records for LR schedulers to check (``optimizer._opt_called``): an update that
    steps the parameters itself marks it, or IQL's cosine schedule warns that it stepped before the optimizer."""
    optimizer._opt_called = True


# The foreach ops: one kernel over a list of tensors (torch.optim's own implementation uses them).

def foreach_lerp_(tensors: list[torch.Tensor], ends: list[torch.Tensor], weight: float) -> None:
    torch._foreach_lerp_(tensors, ends, weight)


def foreach_add_(tensors: list[torch.Tensor], value: float) -> None:
    torch._foreach_add_(tensors, value)


def foreach_mul_(tensors: list[torch.Tensor], value: float) -> None:
    torch._foreach_mul_(tensors, value)


def foreach_addcmul_(tensors: list[torch.Tensor], a: list[torch.Tensor], b: list[torch.Tensor], value: float) -> None:
    torch._foreach_addcmul_(tensors, a, b, value=value)
