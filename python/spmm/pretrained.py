"""spmm.save_pretrained / spmm.from_pretrained: a sparsified Hugging Face model in the directory layout transformers
writes (config.json, generation_config.json, model.safetensors, or shards model-0000i-of-0000n.safetensors with
model.safetensors.index.json), loaded without ever building the dense model.

Every weight file carries the same spmm metadata as spmm.save_sparsified's files (serialization.read_metadata reads
any of them): the format version, the sparse module entries, and here also `aliases` (state-dict keys stored once:
tied weights) and `output_errors` (each layer's relative output error on the calibration data, when measured).

Loading builds the model from its config with every parameter on the meta device (buffers such as rotary inverse
frequencies are computed on the CPU as usual, since they are not stored), puts empty sparse layers where the entries
say, and assigns the stored tensors, each read with pread(2) into memory the model keeps (no memory-mapped copy
beside it): the peak memory of loading is about the size of the files.
"""

from __future__ import annotations

import copy
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Dict, List, Optional, Tuple, Union

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor, nn

from .nn import SparseLinear
from .serialization import (FORMAT_VERSION, METADATA_KEY, check_module_entry, empty_layer, module_entries,
                            module_table_checksum, read_metadata, tensor_checksum, verify_module_table, verify_tensor)

WEIGHTS_NAME = "model.safetensors"
INDEX_NAME = "model.safetensors.index.json"
PathLike = Union[str, os.PathLike]


def _transformers():
    try:
        import transformers
    except ImportError:
        raise ImportError("spmm.save_pretrained / from_pretrained need the transformers package: "
                          "pip install transformers") from None
    return transformers


# ------------------------------------------------------------------------------------------------- saving ------
def unique_tensors(state: Dict[str, Tensor]) -> Tuple[Dict[str, Tensor], Dict[str, str]]:
    """The tensors of a state dict to store, and the aliases: a key whose tensor is exactly an earlier key's (same
    storage, offset, shape, strides: tied weights, shared layers) is stored once and listed as alias -> key; a
    tensor overlapping another one's storage any other way is stored as a copy."""
    tensors: Dict[str, Tensor] = {}
    aliases: Dict[str, str] = {}
    seen: Dict[tuple, str] = {}
    storages = set()
    for key, t in state.items():
        t = t.detach()
        if t.is_meta:
            raise ValueError(f"model: {key!r} is on the meta device (never loaded); nothing to save")
        ptr = t.untyped_storage().data_ptr()
        view = (t.device, ptr, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in seen:
            aliases[key] = seen[view]
            continue
        seen[view] = key
        tensors[key] = t.clone() if ptr in storages and t.numel() else t.contiguous()
        storages.add(ptr)
    return tensors, aliases


def _output_embeddings_sparse(model: nn.Module) -> bool:
    get = getattr(model, "get_output_embeddings", None)
    return callable(get) and isinstance(get(), SparseLinear)


def _saved_config(model: nn.Module, tensors: Dict[str, Tensor]):
    config = copy.deepcopy(model.config)
    config.architectures = [type(model).__name__]
    floating = next((t.dtype for t in tensors.values() if t.is_floating_point()), None)
    if floating is not None:
        config.dtype = str(floating).removeprefix("torch.")
    if _output_embeddings_sparse(model) and getattr(config, "tie_word_embeddings", False):
        config.tie_word_embeddings = False  # the head now holds its own (sparse) weight
    return config


def _remove_weight_files(directory: Path) -> None:
    """Drop the weight files of an earlier save, so that they cannot mix with the new ones."""
    for path in directory.glob("model*.safetensors"):
        if path.name == WEIGHTS_NAME or path.name.startswith("model-"):
            path.unlink()
    (directory / INDEX_NAME).unlink(missing_ok=True)


def save_pretrained(model: nn.Module, save_directory: PathLike, max_shard_size: Union[int, str] = "5GB") -> None:
    """Write a (sparsified) transformers model to `save_directory`: its config and generation config, and its state
    dict as safetensors, in shards of at most `max_shard_size` (an int in bytes or a string such as "5GB"; a tensor
    larger than that gets a shard of its own) with an index once there is more than one. Tied weights are stored
    once. spmm.from_pretrained loads it back; the files say which modules are sparse and how, plus each layer's
    output error when spmm.sparsify measured it."""
    config = getattr(model, "config", None)
    if not isinstance(model, nn.Module) or not callable(getattr(config, "save_pretrained", None)):
        raise TypeError(f"model: spmm.save_pretrained needs a transformers model (an nn.Module with a .config), got "
                        f"{type(model).__name__}; spmm.save_sparsified saves any other module")
    from huggingface_hub import split_torch_state_dict_into_shards  # a dependency of transformers

    tensors, aliases = unique_tensors(model.state_dict())
    errors = {name: m.output_error for name, m in model.named_modules(remove_duplicate=False)
              if isinstance(m, SparseLinear) and m.output_error is not None}
    modules = module_entries(model)
    checksums = {"modules": module_table_checksum(modules),
                 "tensors": {key: tensor_checksum(t) for key, t in tensors.items()}}
    info = {"version": FORMAT_VERSION, "modules": modules, "checksums": checksums, "aliases": aliases,
            "output_errors": errors}
    metadata = {"format": "pt", METADATA_KEY: json.dumps(info)}

    directory = Path(save_directory)
    directory.mkdir(parents=True, exist_ok=True)
    _remove_weight_files(directory)
    split = split_torch_state_dict_into_shards(tensors, max_shard_size=max_shard_size)
    for filename, keys in split.filename_to_tensors.items():
        save_file({k: tensors[k].cpu() for k in keys}, directory / filename, metadata=metadata)
    if split.is_sharded:
        index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
        (directory / INDEX_NAME).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    _saved_config(model, tensors).save_pretrained(directory)
    generation = getattr(model, "generation_config", None)
    if generation is not None and callable(getattr(model, "can_generate", None)) and model.can_generate():
        generation.save_pretrained(directory)


# ------------------------------------------------------------------------------------------------ reading ------
def weight_files(directory: PathLike) -> List[Path]:
    """The safetensors files of a saved model directory (from its index when sharded)."""
    directory = Path(directory)
    if not directory.is_dir():
        raise ValueError(f"directory: {os.fspath(directory)!r} is not a directory")
    index = directory / INDEX_NAME
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text())["weight_map"]
        except (ValueError, KeyError, TypeError) as why:
            raise ValueError(f"directory: {os.fspath(index)!r} is not a weights index ({why})") from None
        files = [directory / name for name in sorted(set(weight_map.values()))]
        missing = [f.name for f in files if not f.is_file()]
        if missing:
            raise ValueError(f"directory: {os.fspath(directory)!r} lacks the shards {missing} its index names")
        return files
    if (directory / WEIGHTS_NAME).is_file():
        return [directory / WEIGHTS_NAME]
    raise ValueError(f"directory: {os.fspath(directory)!r} holds no {WEIGHTS_NAME} or {INDEX_NAME}: not a saved "
                     f"model")


def saved_metadata(directory: PathLike) -> Dict:
    """The spmm metadata of a directory written by save_pretrained (format version checked)."""
    files = weight_files(directory)
    try:
        return read_metadata(files[0])
    except ValueError as why:
        raise ValueError(f"directory: {os.fspath(directory)!r} holds no spmm-sparsified model ({why})") from None


def stored_tensors(directory: PathLike) -> Dict[str, Tuple[Tuple[int, ...], str]]:
    """Shape and safetensors dtype code ("F16", "BF16", ...) of every stored tensor, read from the file headers."""
    found = {}
    for path in weight_files(directory):
        with safe_open(path, framework="pt") as f:
            for key in f.keys():
                part = f.get_slice(key)
                found[key] = (tuple(part.get_shape()), part.get_dtype())
    return found


# ------------------------------------------------------------------------------------------------ loading ------
@contextmanager
def _parameters_on_meta():
    """Inside the with-block, every parameter a module registers goes to the meta device (no memory, no init
    cost); buffers are created as usual. Patches nn.Module.register_parameter, so not thread-safe."""
    register = nn.Module.register_parameter

    def register_on_meta(module, name, param):
        if param is not None and not param.is_meta:
            param = nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        register(module, name, param)

    nn.Module.register_parameter = register_on_meta
    try:
        yield
    finally:
        nn.Module.register_parameter = register


def _model_class(config):
    transformers = _transformers()
    for name in getattr(config, "architectures", None) or []:
        cls = getattr(transformers, name, None)
        if isinstance(cls, type) and issubclass(cls, nn.Module):
            return cls
    return transformers.AutoModelForCausalLM  # raises for a config it has no causal LM for


def _set_tensor(model: nn.Module, key: str, tensor: Tensor) -> None:
    owner_name, _, attr = key.rpartition(".")
    owner = model.get_submodule(owner_name)
    if attr in owner._parameters:
        owner._parameters[attr] = tensor
    else:
        owner._buffers[attr] = tensor


@torch.no_grad()
def from_pretrained(directory: PathLike, device=None, verify_checksums: bool = True) -> nn.Module:
    """Load a model written by spmm.save_pretrained: built from its config on the meta device, sparse layers swapped
    in, then only the stored tensors read (onto `device`, default the CPU), tied weights tied again. Returns the
    model in eval mode, with its generation config and each sparse layer's output_error.

    Checked as spmm.load_sparsified checks a file: every sparse entry against the module the config builds there
    (kind, features, bias), the crc32 of the module table and of every tensor (verify_checksums=False skips them),
    each layer's layout (validate(), as the layers load it). A ValueError names the layer or tensor."""
    transformers = _transformers()
    directory = Path(directory)
    files = weight_files(directory)
    info = saved_metadata(directory)
    checksums = info.get("checksums") if verify_checksums else None
    if checksums is not None:
        verify_module_table(info["modules"], checksums["modules"])
    config = transformers.AutoConfig.from_pretrained(directory, local_files_only=True)
    cls = _model_class(config)
    with _parameters_on_meta():
        model = cls.from_config(config) if hasattr(cls, "from_config") else cls._from_config(config)

    shapes = stored_tensors(directory)
    swapped: Dict[int, SparseLinear] = {}  # id(placeholder) -> sparse layer: a shared module stays shared
    for name, entry in info["modules"].items():
        try:
            placeholder = model.get_submodule(name)
        except AttributeError:
            raise ValueError(f"directory: the model built from {os.fspath(directory / 'config.json')!r} has no "
                             f"module {name!r}, which the weights list") from None
        if id(placeholder) not in swapped:
            dtype = _dtype_of(shapes, f"{name}.values")
            check_module_entry(name, entry, placeholder)
            swapped[id(placeholder)] = empty_layer(entry, device="meta", dtype=dtype)
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, swapped[id(placeholder)])

    state: Dict[str, Tensor] = {}
    for path in files:
        state.update(_read_tensors(path, device))
    if checksums is not None:
        if set(checksums["tensors"]) != set(state):
            raise ValueError(f"directory: the stored tensors and their checksums name different keys "
                             f"({sorted(set(checksums['tensors']) ^ set(state))[:5]})")
        for key, t in state.items():
            verify_tensor(key, t, checksums["tensors"][key])
    aliases = info.get("aliases", {})
    for alias, key in aliases.items():
        state[alias] = state[key]
    try:
        model.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as why:  # keys or shapes that do not fit the model the config builds
        raise ValueError(f"directory: the weights in {os.fspath(directory)!r} do not fit the model its config "
                         f"builds: {str(why).strip()[:500]}") from None
    for alias, key in aliases.items():  # assign gave each key a Parameter of its own: share the very object again
        owner_name, _, attr = key.rpartition(".")
        owner = model.get_submodule(owner_name)
        _set_tensor(model, alias, owner._parameters.get(attr, owner._buffers.get(attr)))
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise ValueError(f"directory: {os.fspath(directory)!r} does not hold {left[:5]} ({len(left)} tensors)")
    if device is not None:  # the buffers computed at construction (not model.to: the rest is there already)
        for module in model.modules():
            for name in module._non_persistent_buffers_set:
                if module._buffers.get(name) is not None:
                    module._buffers[name] = module._buffers[name].to(device)
    for name, error in info.get("output_errors", {}).items():
        model.get_submodule(name).output_error = error
    if (directory / "generation_config.json").is_file():
        model.generation_config = transformers.GenerationConfig.from_pretrained(directory, local_files_only=True)
    return model.eval()


def _read_tensors(path: Path, device=None) -> Dict[str, Tensor]:
    """Every tensor of one file, each read into memory of its own: with pread(2) (safetensors >= 0.8); older
    safetensors memory-map the file, and each tensor is copied out of the map."""
    try:
        opened, copy_out = safe_open(path, framework="pt", backend="pread"), False
    except TypeError:  # no backend argument
        opened, copy_out = safe_open(path, framework="pt"), True
    tensors = {}
    with opened as f:
        for key in getattr(f, "offset_keys", f.keys)():  # in file order, where offered
            t = f.get_tensor(key)
            tensors[key] = t.to(device) if device is not None else t.clone() if copy_out else t
    return tensors


_SAFETENSORS_DTYPES = {"F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16}


def _dtype_of(shapes: Dict[str, Tuple[Tuple[int, ...], str]], key: str) -> Optional[torch.dtype]:
    found = shapes.get(key)
    return None if found is None else _SAFETENSORS_DTYPES.get(found[1])
