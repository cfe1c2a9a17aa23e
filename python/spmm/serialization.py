"""Save/load sparsified models as safetensors: the state dict plus JSON metadata naming each sparse module, its
class and its shape parameters, so a freshly built dense model can be re-swapped before loading."""

from __future__ import annotations

import json
import os
from typing import Dict, Union

import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

from .nn import SparseLinear, Sparse24Linear, SpenseLinear, TiledCSLLinear

METADATA_KEY = "spmm"
FORMAT_VERSION = 1
_LAYERS = {cls.__name__: cls for cls in (Sparse24Linear, TiledCSLLinear, SpenseLinear)}

PathLike = Union[str, os.PathLike]


def _module_entry(layer: SparseLinear) -> Dict:
    return {"class": type(layer).__name__, "in_features": layer.in_features, "out_features": layer.out_features,
            "bias": layer.bias is not None, **layer.format_kwargs()}


def module_entries(model: nn.Module) -> Dict[str, Dict]:
    """The metadata entry (class, features, bias, format arguments) of each sparse module of `model`, by name; a
    shared layer is listed under every name it has."""
    named = model.named_modules(remove_duplicate=False)
    return {name: _module_entry(m) for name, m in named if isinstance(m, SparseLinear)}


def empty_layer(entry: Dict, device=None, dtype=None) -> SparseLinear:
    """An empty sparse layer shaped as a module entry says; its tensors come from load_state_dict."""
    entry = dict(entry)
    cls = _LAYERS.get(entry.pop("class", None))
    if cls is None:
        raise ValueError(f"module entry {entry!r} names no known sparse layer class ({sorted(_LAYERS)})")
    return cls(**entry, device=device, dtype=dtype)


def save_sparsified(model: nn.Module, path: PathLike) -> None:
    """Write model.state_dict() to `path` (safetensors) with the sparse modules listed in its metadata."""
    modules = module_entries(model)
    tensors, seen = {}, set()
    for key, t in model.state_dict().items():
        t = t.detach().contiguous()
        if t.untyped_storage().data_ptr() in seen:  # safetensors refuses tensors that share memory (tied weights)
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[key] = t
    meta = {METADATA_KEY: json.dumps({"version": FORMAT_VERSION, "modules": modules})}
    save_file(tensors, os.fspath(path), metadata=meta)


def read_metadata(path: PathLike) -> Dict:
    with safe_open(os.fspath(path), framework="pt") as f:
        meta = f.metadata() or {}
    if METADATA_KEY not in meta:
        raise ValueError(f"path: {os.fspath(path)!r} holds no spmm metadata (was it written by save_sparsified?)")
    info = json.loads(meta[METADATA_KEY])
    if info.get("version") != FORMAT_VERSION:
        raise ValueError(f"path: spmm metadata version {info.get('version')!r}, this spmm reads {FORMAT_VERSION}")
    return info


@torch.no_grad()
def load_sparsified(model: nn.Module, path: PathLike) -> nn.Module:
    """Swap the modules listed in `path` into `model` (a freshly built dense model of the same architecture) as
    empty sparse layers, then load every tensor (strict). Returns `model`."""
    info = read_metadata(path)
    swapped = {}  # id(dense) -> sparse layer: a module shared by several names stays shared
    for name, entry in info["modules"].items():
        if entry.get("class") not in _LAYERS:
            raise ValueError(f"path: module {name!r} has an unknown class")
        try:
            dense = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"model has no module {name!r}, which {os.fspath(path)!r} lists") from None
        if id(dense) not in swapped:
            like = next(dense.parameters(), None)  # the replaced layer decides device and dtype
            swapped[id(dense)] = empty_layer(entry, getattr(like, "device", None), getattr(like, "dtype", None))
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, swapped[id(dense)])
    model.load_state_dict(load_file(os.fspath(path)), strict=True)
    return model
