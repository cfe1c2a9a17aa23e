"""Save/load sparsified models as safetensors: the state dict plus JSON metadata naming each sparse module, its
class and its shape parameters, so a freshly built dense model can be re-swapped before loading.

What a load checks, before it changes the model (on any error the model is left as it was):
  - the file: readable safetensors, spmm metadata of a format version this spmm reads (a newer one is refused);
  - checksums (verify_checksums=True, the default): a crc32 of each tensor's dtype, shape and bytes, and of the
    module table, recorded at save time (a crc32 runs at several GB/s; it finds damaged or edited files, it is no
    defence against someone who rewrites the checksums too);
  - every listed layer against the model's module of that name: an nn.Linear (or a sparse layer), with the same
    in/out features, bias or not, and the dtype of the file's weights; the layer is built and loaded beside the
    model and its packed weight validated (format.validate(): metadata codes, offsets and locations inside their
    tiles, no duplicates, row_index a permutation);
  - every other tensor against the model's: the same keys, shapes and dtypes.
Only then are the tensors copied in and the layers swapped in.

The pieces are public for other loaders (sharded files): tensor_checksum / verify_tensor, module_table_checksum /
verify_module_table, check_module_entry and load_layer.
"""

from __future__ import annotations

import inspect
import json
import os
import warnings
import zlib
from typing import Dict, Mapping, Optional, Tuple, Type, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from .nn import SparseLinear, Sparse24Linear, SpenseLinear, TiledCSLLinear

METADATA_KEY = "spmm"
# 1: module table only; 2: + checksums of every tensor and of the module table.
FORMAT_VERSION = 2
_LAYERS = {cls.__name__: cls for cls in (Sparse24Linear, TiledCSLLinear, SpenseLinear)}
_ENTRY_FIELDS = ("class", "in_features", "out_features", "bias")  # the rest of an entry are format arguments

PathLike = Union[str, os.PathLike]


# ------------------------------------------------------------------------------------------------ checksums -------
def tensor_checksum(t: Tensor) -> str:
    """crc32 of a tensor's dtype, shape and bytes (8 hex digits): a changed dtype or shape changes it too."""
    t = t.detach().to("cpu").contiguous()
    crc = zlib.crc32(f"{t.dtype}{list(t.shape)}".encode())
    if t.numel():
        crc = zlib.crc32(memoryview(t.reshape(-1).view(torch.uint8).numpy()), crc)
    return f"{crc:08x}"


def verify_tensor(key: str, t: Tensor, checksum: str) -> None:
    """Raise a ValueError naming `key` unless `t` has the recorded `checksum`."""
    got = tensor_checksum(t)
    if got != checksum:
        raise ValueError(f"{key}: checksum {got} differs from the recorded {checksum}: the tensor was changed or "
                         f"damaged after it was saved")


def module_table_checksum(modules: Mapping) -> str:
    return f"{zlib.crc32(json.dumps(modules, sort_keys=True).encode()):08x}"


def verify_module_table(modules: Mapping, checksum: str) -> None:
    got = module_table_checksum(modules)
    if got != checksum:
        raise ValueError(f"the module table's checksum {got} differs from the recorded {checksum}: the metadata was "
                         f"changed or damaged after it was saved")


# ------------------------------------------------------------------------------------------------ saving ----------
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
    """Write model.state_dict() to `path` (safetensors) with the sparse modules listed in its metadata and a
    checksum of every tensor and of that list."""
    modules = module_entries(model)
    tensors, seen = {}, set()
    for key, t in model.state_dict().items():
        t = t.detach().contiguous()
        if t.untyped_storage().data_ptr() in seen:  # safetensors refuses tensors that share memory (tied weights)
            t = t.clone()
        seen.add(t.untyped_storage().data_ptr())
        tensors[key] = t
    checksums = {"modules": module_table_checksum(modules),
                 "tensors": {key: tensor_checksum(t) for key, t in tensors.items()}}
    meta = {METADATA_KEY: json.dumps({"version": FORMAT_VERSION, "modules": modules, "checksums": checksums})}
    save_file(tensors, os.fspath(path), metadata=meta)


# ------------------------------------------------------------------------------------------------ reading ---------
def _unreadable(path: PathLike, why) -> ValueError:
    return ValueError(f"path: {os.fspath(path)!r} is not a readable safetensors file ({why})")


def _is_str_map(d) -> bool:
    return isinstance(d, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in d.items())


def read_metadata(path: PathLike) -> Dict:
    """The file's spmm metadata ({"version", "modules", and from version 2 "checksums"}), its structure checked."""
    try:
        with safe_open(os.fspath(path), framework="pt") as f:
            meta = f.metadata() or {}
    except SafetensorError as e:
        raise _unreadable(path, e) from None
    if METADATA_KEY not in meta:
        raise ValueError(f"path: {os.fspath(path)!r} holds no spmm metadata (was it written by save_sparsified?)")
    try:
        info = json.loads(meta[METADATA_KEY])
    except ValueError as e:
        raise ValueError(f"path: the spmm metadata of {os.fspath(path)!r} is not valid JSON ({e})") from None
    version = info.get("version") if isinstance(info, dict) else None
    if type(version) is not int or version < 1:
        raise ValueError(f"path: the spmm metadata of {os.fspath(path)!r} has no valid format version "
                         f"(got {version!r})")
    if version > FORMAT_VERSION:
        raise ValueError(f"path: {os.fspath(path)!r} was written by a newer spmm (format version {version}); this "
                         f"spmm reads format versions up to {FORMAT_VERSION}: upgrade spmm to load it")
    modules = info.get("modules")
    if not isinstance(modules, dict) or not all(isinstance(e, dict) for e in modules.values()):
        raise ValueError(f"path: the spmm metadata of {os.fspath(path)!r} has no valid module table")
    if version >= 2:
        checksums = info.get("checksums")
        if not (isinstance(checksums, dict) and isinstance(checksums.get("modules"), str)
                and _is_str_map(checksums.get("tensors"))):
            raise ValueError(f"path: the spmm metadata of {os.fspath(path)!r} has no valid checksums")
    return info


def _read_tensors(path: PathLike) -> Dict[str, Tensor]:
    try:
        return load_file(os.fspath(path))
    except SafetensorError as e:
        raise _unreadable(path, e) from None


# ------------------------------------------------------------------------------------------------ one layer -------
def _is_int(v) -> bool:
    return type(v) is int


def _module_dtype_device(module: nn.Module) -> Tuple[Optional[torch.dtype], Optional[torch.device]]:
    if isinstance(module, SparseLinear):
        fmt = module.weight_format
        return fmt.dtype, fmt.device
    weight = getattr(module, "weight", None)
    return (weight.dtype, weight.device) if isinstance(weight, Tensor) else (None, None)


def check_module_entry(name: str, entry: Mapping, module: nn.Module,
                       dtype: Optional[torch.dtype] = None) -> Tuple[Type[SparseLinear], Dict]:
    """Check one entry of a file's module table against the model's `module` of that name (an nn.Linear, or a
    sparse layer, with the same in/out features and bias or not; `dtype`, the dtype of the file's weights for the
    layer, against the module's). Returns the sparse layer class and its constructor arguments; a ValueError names
    the layer and the mismatch."""
    def fail(why: str) -> ValueError:
        return ValueError(f"{name or '<root>'}: {why}")

    cls = _LAYERS.get(entry.get("class"))
    if cls is None:
        raise fail(f"the file lists an unknown layer class {entry.get('class')!r}; known: {sorted(_LAYERS)}")
    kwargs = {key: value for key, value in entry.items() if key != "class"}
    takes = set(inspect.signature(cls.__init__).parameters) - {"self", "device", "dtype"}
    if set(_ENTRY_FIELDS[1:]) - set(kwargs) or set(kwargs) - takes:
        raise fail(f"the file's entry for a {cls.__name__} has fields {sorted(kwargs)}; it needs in_features, "
                   f"out_features, bias and the format's arguments (of {sorted(takes - set(_ENTRY_FIELDS))})")
    for key, value in kwargs.items():
        if not (isinstance(value, bool) if key == "bias" else _is_int(value)):
            raise fail(f"the file's {key!r} is {value!r}, not {'a bool' if key == 'bias' else 'an int'}")
    if not isinstance(module, (nn.Linear, SparseLinear)):
        raise fail(f"the model has a {type(module).__name__} here, the file a {cls.__name__} (an nn.Linear "
                   f"replacement)")
    for key in ("in_features", "out_features"):
        if getattr(module, key) != kwargs[key]:
            raise fail(f"{key} differ: the model's layer has {getattr(module, key)}, the file's {kwargs[key]}")
    if (module.bias is not None) != kwargs["bias"]:
        has = "has a bias" if module.bias is not None else "has no bias"
        raise fail(f"the model's layer {has}, the file's {'has one' if kwargs['bias'] else 'has none'}")
    module_dtype, _ = _module_dtype_device(module)
    if dtype is not None and module_dtype is not None and dtype != module_dtype:
        raise fail(f"the file's weights are {dtype}, the model's layer is {module_dtype}; build the model in {dtype} "
                   f"before loading")
    return cls, kwargs


def _layer_tensors(name: str, tensors: Mapping[str, Tensor]) -> Dict[str, Tensor]:
    prefix = f"{name}." if name else ""
    return {key[len(prefix):]: t for key, t in tensors.items()
            if key.startswith(prefix) and "." not in key[len(prefix):]}


def load_layer(name: str, entry: Mapping, module: nn.Module, tensors: Mapping[str, Tensor],
               device=None) -> SparseLinear:
    """The sparse layer the file lists at `name`, checked against the model's `module` there (check_module_entry),
    built in that module's dtype on `device` (default: the module's; for a module on the meta device, where the
    tensors are) and loaded from its tensors in `tensors` (keys `name`.values, ...; the packed weight validated).
    The model is not touched. A ValueError names the layer and what is wrong."""
    own = _layer_tensors(name, tensors)
    dtypes = {t.dtype for t in own.values() if t.is_floating_point()}
    if len(dtypes) > 1:
        raise ValueError(f"{name or '<root>'}: the file's tensors of this layer mix dtypes {sorted(map(str, dtypes))}")
    cls, kwargs = check_module_entry(name, entry, module, next(iter(dtypes), None))
    dtype, module_device = _module_dtype_device(module)
    device = module_device if device is None else torch.device(device)
    if device is not None and device.type == "meta" and own:
        device = next(iter(own.values())).device
    try:
        layer = cls(**kwargs, device=device, dtype=dtype)
        if set(layer.format_kwargs()) != set(kwargs) - set(_ENTRY_FIELDS):
            raise ValueError(f"the file's entry lacks the format arguments {sorted(layer.format_kwargs())}")
        layer.load_state_dict(own, strict=True)
    except (ValueError, RuntimeError) as e:
        raise ValueError(f"{name or '<root>'}: {e}") from None
    return layer


# ------------------------------------------------------------------------------------------------ loading ---------
def _describe(t: Tensor) -> str:
    return f"{t.dtype} {tuple(t.shape)}"


def _few(keys) -> str:
    keys = sorted(keys)
    return ", ".join(keys[:5]) + (f" and {len(keys) - 5} more" if len(keys) > 5 else "")


@torch.no_grad()
def load_sparsified(model: nn.Module, path: PathLike, verify_checksums: bool = True) -> nn.Module:
    """Swap the modules listed in `path` into `model` (a freshly built dense model of the same architecture, in
    the dtype the file was saved in) as sparse layers and load every tensor (strict). Returns `model` (or, when
    the file holds one layer saved on its own, that layer).

    Everything is checked before the model changes (see the module docstring); on any error the model is left as
    it was and a ValueError names the layer or tensor and the mismatch. verify_checksums=False skips the checksums
    (a crc32 pass over the file's bytes) for speed; every other check still runs."""
    info = read_metadata(path)
    modules = info["modules"]
    checksums = info.get("checksums")
    if checksums is None:
        warnings.warn(f"spmm.load_sparsified: {os.fspath(path)!r} has format version {info['version']}, written "
                      f"before checksums: its tensors cannot be verified; save it again to add them", stacklevel=2)
    elif verify_checksums:
        verify_module_table(modules, checksums["modules"])
    tensors = _read_tensors(path)
    if checksums is not None and verify_checksums:
        if set(checksums["tensors"]) != set(tensors):
            raise ValueError(f"path: the file's tensors and its checksums name different keys "
                             f"({_few(set(checksums['tensors']) ^ set(tensors))})")
        for key, t in tensors.items():
            verify_tensor(key, t, checksums["tensors"][key])

    # The sparse layers, built and loaded beside the model (a module shared by several names stays shared).
    layers: Dict[str, SparseLinear] = {}
    made: Dict[int, SparseLinear] = {}  # id(module) -> its layer
    for name, entry in modules.items():
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"model has no module {name!r}, which {os.fspath(path)!r} lists") from None
        if id(module) not in made:
            made[id(module)] = load_layer(name, entry, module, tensors)
        else:
            for key, t in made[id(module)].state_dict().items():
                if not torch.equal(tensors.get(f"{name}.{key}", t), t):
                    raise ValueError(f"{name}.{key}: the file holds different tensors for two names of one shared "
                                     f"module")
        layers[name] = made[id(module)]
    if "" in layers:
        if len(tensors) != len(layers[""].state_dict()):
            raise ValueError(f"path: the file holds a single layer and other tensors ({_few(tensors)})")
        return layers[""]

    # Every other tensor against the model's.
    current = model.state_dict(keep_vars=True)
    replaced = {f"{name}.{key}" for name in layers for key in model.get_submodule(name).state_dict()}
    rest = {key: t for key, t in current.items() if key not in replaced}
    sparse_keys = {f"{name}.{key}" for name, layer in layers.items() for key in layer.state_dict()}
    missing, unexpected = (rest.keys() | sparse_keys) - tensors.keys(), tensors.keys() - rest.keys() - sparse_keys
    if missing or unexpected:
        raise ValueError(f"path: the file and the model differ: missing from the file: {_few(missing) or 'none'}; "
                         f"not in the model: {_few(unexpected) or 'none'}")
    for key, want in rest.items():
        got = tensors[key]
        if got.shape != want.shape or got.dtype != want.dtype:
            raise ValueError(f"{key}: the file holds {_describe(got)}, the model {_describe(want)}")
    for name, module in model.named_modules():  # sparse layers the file does not replace: their layouts too
        if isinstance(module, SparseLinear) and name not in layers:
            module._validate_incoming(tensors, f"{name}." if name else "")

    # Checked: now change the model.
    model.load_state_dict({key: tensors[key] for key in rest}, strict=False)
    for name, layer in layers.items():
        parent_name, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent_name), child, layer)
    return model
