"""Backward formulas of the matmul ops, for the activations and the bias (not for the packed weight).

A pruned, packed weight is frozen, but the layers around it may train (adapters on top of a sparse base, or
calibrating later layers through earlier ones), so gradients must flow through x:
    y = x @ W.T + b   =>   dL/dx = dL/dy @ W,   dL/db = sum over tokens of dL/dy.
W is rebuilt densely for the backward pass (in pure torch, from the format, unchecked: the forward op or the layer
already checked the layout); a request for the gradient of a packed tensor raises instead of returning a silent None.
"""

from __future__ import annotations

import torch

from .formats import Sparse24Weight, SpenseWeight, TiledCSLWeight, tiled_csl_layouts
from .ops import SPARSE24_LAYOUTS


def _no_weight_grad(ctx, op: str, weight_args) -> None:
    if any(ctx.needs_input_grad[i] for i in weight_args if i < len(ctx.needs_input_grad)):
        raise RuntimeError(f"spmm::{op}: the packed weight is not differentiable; only x and bias get gradients")


# The matmul ops take the weight's kernel layouts after bias: copies of the packed weight for the CUDA kernels, as
# frozen as it is. The dispatcher leaves out trailing arguments left at their defaults (None), so a
# backward returns one gradient per input it was given: _per_input.
_LAYOUT_ARGS = len(SPARSE24_LAYOUTS)


def _per_input(ctx, grads):
    n = len(ctx.needs_input_grad)
    return tuple(grads[:n]) + (None,) * (n - len(grads))


def _grads(ctx, grad_out, weight):
    grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
    grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0) if ctx.bias_grad else None
    return grad_x, grad_bias


# --------------------------------------------------------------------------------------------- sparse24_mm ---------
def _sparse24_setup(ctx, inputs, output):
    x, values, meta, bias = inputs[:4]  # setup_context sees every argument, defaults filled in
    ctx.save_for_backward(values, meta)
    ctx.k = x.shape[-1]
    ctx.bias_grad = bias is not None and ctx.needs_input_grad[3]


def _sparse24_backward(ctx, grad_out):
    _no_weight_grad(ctx, "sparse24_mm", [1, 2, *range(4, 4 + _LAYOUT_ARGS)])
    values, meta = ctx.saved_tensors
    weight = Sparse24Weight(values, meta, (values.shape[0], ctx.k)).to_dense(check=False)
    grad_x, grad_bias = _grads(ctx, grad_out, weight)
    return _per_input(ctx, (grad_x, None, None, grad_bias))


# -------------------------------------------------------------------------------------------- tiled_csl_mm ---------
_TILED_CSL_WEIGHT_ARGS = (1, 2, 3, 8, 9, 10, 11, 12)  # the stream and the kernel layouts


def _tiled_csl_setup(ctx, inputs, output):
    inputs = tuple(inputs) + (None,) * (13 - len(inputs))
    x, values, locations, tile_offsets, out_features, tile_m, tile_k, bias = inputs[:8]
    ctx.save_for_backward(values, locations, tile_offsets, *inputs[8:])
    ctx.shape, ctx.tile = (out_features, x.shape[-1]), (tile_m, tile_k)
    ctx.bias_grad = bias is not None and ctx.needs_input_grad[7]


def _tiled_csl_weight(ctx) -> TiledCSLWeight:
    """The stream the op was given, or where it was left empty (tile_offsets with no entry), the layout's."""
    values, locations, tile_offsets, words, word_offsets, delta_values, delta_codes, delta_offsets = ctx.saved_tensors
    if tile_offsets.numel() > 0:
        return TiledCSLWeight(values, locations, tile_offsets, ctx.shape, *ctx.tile)
    if delta_values is not None:
        return tiled_csl_layouts.delta_to_weight(delta_values, delta_codes, delta_offsets, ctx.shape, *ctx.tile)
    return tiled_csl_layouts.words_to_weight(words, word_offsets, ctx.shape, *ctx.tile)


def _tiled_csl_backward(ctx, grad_out):
    _no_weight_grad(ctx, "tiled_csl_mm", _TILED_CSL_WEIGHT_ARGS)
    weight = _tiled_csl_weight(ctx).to_dense(check=False)
    grad_x, grad_bias = _grads(ctx, grad_out, weight)
    return _per_input(ctx, (grad_x, None, None, None, None, None, None, grad_bias))


# ----------------------------------------------------------------------------------------------- spense_mm ---------
def _spense_setup(ctx, inputs, output):
    x, dense_weight, values, meta, row_index, bias = inputs[:6]
    ctx.save_for_backward(dense_weight, values, meta, row_index)
    ctx.k = x.shape[-1]
    ctx.bias_grad = bias is not None and ctx.needs_input_grad[5]


def _spense_backward(ctx, grad_out):
    _no_weight_grad(ctx, "spense_mm", [1, 2, 3, 4, *range(6, 6 + _LAYOUT_ARGS)])
    dense_weight, values, meta, row_index = ctx.saved_tensors
    sparse = Sparse24Weight(values, meta, (values.shape[0], ctx.k))
    weight = SpenseWeight(dense_weight, sparse, row_index).to_dense(check=False)
    grad_x, grad_bias = _grads(ctx, grad_out, weight)
    return _per_input(ctx, (grad_x, None, None, None, None, grad_bias))


torch.library.register_autograd("spmm::sparse24_mm", _sparse24_backward, setup_context=_sparse24_setup)
torch.library.register_autograd("spmm::tiled_csl_mm", _tiled_csl_backward, setup_context=_tiled_csl_setup)
torch.library.register_autograd("spmm::spense_mm", _spense_backward, setup_context=_spense_setup)
