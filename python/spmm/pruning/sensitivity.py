"""How strongly a block's output responds to each output unit of the linears inside it: what turns a layer's
output error into an error at the block output, comparable between layers of different roles and depths.

For the output unit r of a linear (its output y, the block's output o, both over the calibration tokens), the
sensitivity is the mean over tokens of ||d o / d y_r||^2, estimated with Hutchinson's trick: for random normal
probes v, E[(v . d o / d y_r)^2] = ||d o / d y_r||^2, and v . d o / d y is one backward pass. It is divided by
the mean squared norm of o per token, so an error times it is a share of the block output's energy. Only the
block being calibrated runs with autograd, one batch at a time: memory stays at one block's activations.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Sequence

import torch
from torch import Tensor, nn


@torch.enable_grad()
def block_sensitivity(inputs: Sequence[Any], forward: Callable[[Any], Tensor], linears: Iterable[nn.Module],
                      probes: int = 2, seed: int = 0) -> Dict[nn.Module, Tensor]:
    """{linear: sensitivity [out_features] (float32)} of `linears`, the block's linears, over the block inputs
    `inputs` (`forward(input)` runs the block and returns its output tensor), with `probes` random probes per
    input drawn from a generator seeded with `seed`. A linear the output does not depend on gets zeros."""
    if probes <= 0:
        raise ValueError(f"probes must be positive, got {probes}")
    if torch.is_inference_mode_enabled():
        raise RuntimeError("block sensitivities take gradients: run spmm.sparsify outside torch.inference_mode()")
    linears = list(dict.fromkeys(linears))
    grad_sq = {mod: torch.zeros(mod.out_features) for mod in linears}
    tokens = dict.fromkeys(linears, 0)
    out_energy, out_tokens = 0.0, 0
    generator = torch.Generator().manual_seed(seed)
    taps: Dict[nn.Module, List[Tensor]] = {}

    def tap(mod, args, out):  # y + 0, where the zero is a leaf whose gradient is d o / d y
        zero = torch.zeros_like(out, requires_grad=True)
        taps.setdefault(mod, []).append(zero)
        return out + zero

    handles = [mod.register_forward_hook(tap) for mod in linears]
    try:
        for inp in inputs:
            taps.clear()
            out = forward(inp)
            out_energy += float(out.detach().float().square().sum())
            out_tokens += out.numel() // max(out.shape[-1], 1)
            leaves = [(mod, z) for mod, zs in taps.items() for z in zs]
            for p in range(probes):
                v = torch.randn(out.shape, generator=generator).to(device=out.device, dtype=out.dtype)
                grads = torch.autograd.grad(out, [z for _, z in leaves], grad_outputs=v, retain_graph=p + 1 < probes,
                                            allow_unused=True)
                for (mod, z), g in zip(leaves, grads):
                    if g is not None:
                        grad_sq[mod] += g.detach().float().reshape(-1, mod.out_features).square().sum(0).cpu() / probes
            for mod, z in leaves:
                tokens[mod] += z.numel() // mod.out_features
    finally:
        for handle in handles:
            handle.remove()
    mean_energy = out_energy / max(out_tokens, 1)
    return {mod: grad_sq[mod] / max(tokens[mod], 1) / (mean_energy if mean_energy > 0 else 1.0) for mod in linears}
