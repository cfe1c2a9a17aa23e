"""spmm.summary: per sparse layer, its format, the bytes of the dense layer it replaced and the bytes it stores, and
its relative output error on the calibration data; with totals. The same table comes from a model in memory
(`summary(model)`) and from a directory written by spmm.save_pretrained (`saved_summary(dir)`, headers only). The
module is not named summary.py, so that the function spmm.summary does not hide it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Tuple

from torch import nn

from .nn import SparseLinear
from .pretrained import PathLike, saved_metadata, stored_tensors, unique_tensors
from .serialization import module_entries

# shape and bytes per element of one stored tensor
TensorSize = Tuple[Tuple[int, ...], int]
_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1,
             "U16": 2, "U32": 4, "U64": 8, "F8_E4M3": 1, "F8_E5M2": 1}


@dataclass(frozen=True)
class LayerSummary:
    name: str
    format: str  # "2:4", "unstructured 80.0%", "spense 25.0% dense"
    dense_bytes: int  # an nn.Linear of the same shape and dtype: weight and bias
    sparse_bytes: int  # what the layer stores: its format's tensors and bias
    output_error: Optional[float]  # relative, on the calibration data; None where none was measured


@dataclass(frozen=True)
class Summary:
    layers: List[LayerSummary]
    other_bytes: int  # every other stored tensor (embeddings, norms, layers left dense), each counted once

    @property
    def dense_bytes(self) -> int:
        """The whole model before sparsification."""
        return sum(layer.dense_bytes for layer in self.layers) + self.other_bytes

    @property
    def sparse_bytes(self) -> int:
        """The whole model as stored now."""
        return sum(layer.sparse_bytes for layer in self.layers) + self.other_bytes

    def __str__(self) -> str:
        rows = [(layer.name, layer.format, _size(layer.dense_bytes), _size(layer.sparse_bytes),
                 _ratio(layer.sparse_bytes, layer.dense_bytes), _error(layer.output_error)) for layer in self.layers]
        layer_dense = sum(layer.dense_bytes for layer in self.layers)
        layer_sparse = sum(layer.sparse_bytes for layer in self.layers)
        totals = [
            (f"sparse layers ({len(self.layers)})", "", _size(layer_dense), _size(layer_sparse),
             _ratio(layer_sparse, layer_dense), ""),
            ("other tensors", "dense", _size(self.other_bytes), _size(self.other_bytes), "", ""),
            ("total", "", _size(self.dense_bytes), _size(self.sparse_bytes),
             _ratio(self.sparse_bytes, self.dense_bytes), ""),
        ]
        header = ("layer", "format", "dense", "sparse", "ratio", "output error")
        widths = [max(len(r[i]) for r in [header, *rows, *totals]) for i in range(len(header))]

        def line(row):
            cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
            cells += [cell.rjust(width) for cell, width in zip(row[2:], widths[2:])]
            return "  ".join(cells).rstrip()

        rule = "-" * len(line(tuple("-" * w for w in widths)))
        return "\n".join([line(header), rule, *map(line, rows), rule, *map(line, totals)])


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _ratio(part: int, whole: int) -> str:
    return f"{part / whole:.3f}" if whole else "-"


def _error(error: Optional[float]) -> str:
    return "-" if error is None else f"{error:.4f}"


def _describe(entry: Mapping, sizes: Mapping[str, TensorSize], name: str) -> str:
    kind, rows, cols = entry["class"], entry["out_features"], entry["in_features"]
    if kind == "Sparse24Linear":
        return "2:4"
    if kind == "TiledCSLLinear":
        nnz = _numel(sizes[f"{name}.values"][0])
        return f"unstructured {1 - nnz / (rows * cols):.1%}"
    if kind == "SpenseLinear":
        return f"spense {entry['num_dense_rows'] / rows:.1%} dense"
    return kind


def _numel(shape: Tuple[int, ...]) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def summarize(modules: Mapping[str, Mapping], sizes: Mapping[str, TensorSize],
              output_errors: Mapping[str, float]) -> Summary:
    """The table from module entries (serialization.module_entries), the stored tensors' sizes by state-dict key
    (aliases left out) and the measured output errors by layer name. A layer stored under another name (shared)
    is listed once."""
    layers, owned = [], set()
    for name, entry in modules.items():
        prefix = f"{name}."
        keys = [k for k in sizes if k.startswith(prefix) and "." not in k[len(prefix):]]
        if f"{prefix}values" not in keys:
            continue  # stored under another name
        owned.update(keys)
        itemsize = sizes[f"{prefix}values"][1]
        rows, cols = entry["out_features"], entry["in_features"]
        dense = (rows * cols + (rows if entry["bias"] else 0)) * itemsize
        stored = sum(_numel(sizes[k][0]) * sizes[k][1] for k in keys)
        layers.append(LayerSummary(name, _describe(entry, sizes, name), dense, stored, output_errors.get(name)))
    other = sum(_numel(shape) * itemsize for key, (shape, itemsize) in sizes.items() if key not in owned)
    return Summary(layers, other)


def summary(model: nn.Module) -> Summary:
    """Per sparse layer of `model`: format (a Spense layer's dense fraction, a Tiled-CSL layer's sparsity), bytes of
    the dense layer it replaced and bytes it stores, output error on the calibration data (when spmm.sparsify
    measured it); totals over the model. print() it for a table."""
    tensors, _ = unique_tensors(model.state_dict())
    sizes = {key: (tuple(t.shape), t.element_size()) for key, t in tensors.items()}
    errors = {name: m.output_error for name, m in model.named_modules(remove_duplicate=False)
              if isinstance(m, SparseLinear) and m.output_error is not None}
    return summarize(module_entries(model), sizes, errors)


def saved_summary(directory: PathLike) -> Summary:
    """summary() of a model written by spmm.save_pretrained, from its file headers (no tensor is read)."""
    info = saved_metadata(directory)
    sizes: Dict[str, TensorSize] = {}
    for key, (shape, code) in stored_tensors(directory).items():
        if code not in _ITEMSIZE:
            raise ValueError(f"directory: tensor {key!r} has dtype {code}, which spmm.summary does not size")
        sizes[key] = (shape, _ITEMSIZE[code])
    return summarize(info["modules"], sizes, info.get("output_errors", {}))
