"""Backward formulas of the matmul ops, for the activations and the bias (not for the packed weight).

A pruned, packed weight is frozen, but the layers around it may train (adapters on top of a sparse base, or
calibrating later layers through earlier ones), so gradients must flow through x:
    y = x @ W.T + b   =>   dL/dx = dL/dy @ W,   dL/db = sum over tokens of dL/dy.
W is rebuilt densely for the backward pass (in pure torch, from the format); a request for the gradient of a
packed tensor raises instead of returning a silent None.
"""

from __future__ import annotations

import torch

from .formats import Sparse24Weight, SpenseWeight, TiledCSLWeight


def _no_weight_grad(ctx, op: str, weight_args) -> None:
    needs = ctx.needs_input_grad  # as long as the arguments given (a default one left out is not there)
    if any(i < len(needs) and needs[i] for i in weight_args):
        raise RuntimeError(f"spmm::{op}: the packed weight is not differentiable; only x and bias get gradients")


def _grads(ctx, grad_out, weight):
    grad_x = grad_out @ weight if ctx.needs_input_grad[0] else None
    grad_bias = grad_out.reshape(-1, grad_out.shape[-1]).sum(0) if ctx.bias_grad else None
    return grad_x, grad_bias


# --------------------------------------------------------------------------------------------- sparse24_mm ---------
def _sparse24_setup(ctx, inputs, output):
    x, values, meta, bias = inputs
    ctx.save_for_backward(values, meta)
    ctx.k = x.shape[-1]
    ctx.bias_grad = bias is not None and ctx.needs_input_grad[3]


def _sparse24_backward(ctx, grad_out):
    _no_weight_grad(ctx, "sparse24_mm", range(1, 3))
    values, meta = ctx.saved_tensors
    weight = Sparse24Weight(values, meta, (values.shape[0], ctx.k)).to_dense()
    grad_x, grad_bias = _grads(ctx, grad_out, weight)
    return grad_x, None, None, grad_bias


# -------------------------------------------------------------------------------------------- tiled_csl_mm ---------
def _tiled_csl_setup(ctx, inputs, output):
    x, values, locations, tile_offsets, out_features, tile_m, tile_k, bias, _cpu_bitmap = inputs
    ctx.save_for_backward(values, locations, tile_offsets)
    ctx.shape, ctx.tile = (out_features, x.shape[-1]), (tile_m, tile_k)
    ctx.bias_grad = bias is not None and ctx.needs_input_grad[7]


def _tiled_csl_backward(ctx, grad_out):
    _no_weight_grad(ctx, "tiled_csl_mm", (1, 2, 3, 8))
    values, locations, tile_offsets = ctx.saved_tensors
    weight = TiledCSLWeight(values, locations, tile_offsets, ctx.shape, *ctx.tile).to_dense()
    grad_x, grad_bias = _grads(ctx, grad_out, weight)
    return grad_x, None, None, None, None, None, None, grad_bias, None


# ----------------------------------------------------------------------------------------------- spense_mm ---------
def _spense_setup(ctx, inputs, output):
    x, dense_weight, values, meta, row_index, bias = inputs
    ctx.save_for_backward(dense_weight, values, meta, row_index)
    ctx.k = x.shape[-1]
    ctx.bias_grad = bias is not None and ctx.needs_input_grad[5]


def _spense_backward(ctx, grad_out):
    _no_weight_grad(ctx, "spense_mm", range(1, 5))
    dense_weight, values, meta, row_index = ctx.saved_tensors
    sparse = Sparse24Weight(values, meta, (values.shape[0], ctx.k))
    weight = SpenseWeight(dense_weight, sparse, row_index).to_dense()
    grad_x, grad_bias = _grads(ctx, grad_out, weight)
    return grad_x, None, None, None, None, grad_bias


torch.library.register_autograd("spmm::sparse24_mm", _sparse24_backward, setup_context=_sparse24_setup)
torch.library.register_autograd("spmm::tiled_csl_mm", _tiled_csl_backward, setup_context=_tiled_csl_setup)
torch.library.register_autograd("spmm::spense_mm", _spense_backward, setup_context=_spense_setup)
