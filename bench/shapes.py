"""The shape set (bench/shapes.json) and the subset a run uses."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

SHAPES_JSON = Path(__file__).with_name("shapes.json")


@dataclass(frozen=True)
class Layer:
    name: str
    M: int  # out_features
    K: int  # in_features


def load(path: Path = SHAPES_JSON) -> dict:
    data = json.loads(Path(path).read_text())
    for key in ("layers", "cpu_layers"):
        data[key] = [Layer(name, m, k) for name, m, k in data.get(key, [])]
    return data


def shrink(layer: Layer, factor: int) -> Layer:
    """Divide M and K by `factor`, keeping multiples of 64 (what the packers and kernels tile by)."""
    if factor <= 1:
        return layer
    m, k = (max(64, dim // factor // 64 * 64) for dim in (layer.M, layer.K))
    return Layer(f"{layer.name}/{factor}", m, k)


def select_layers(layers: Sequence[Layer], names: Optional[List[str]], count: Optional[int]) -> List[Layer]:
    """Layers whose name contains any of `names`; without names, the `count` smallest (None: all)."""
    if names:
        picked = [l for l in layers if any(s in l.name for s in names)]
        if not picked:
            raise SystemExit(f"--layers {names}: no layer matches; known: {[l.name for l in layers]}")
        return picked
    if count is None:
        return list(layers)
    return sorted(layers, key=lambda l: l.M * l.K)[:count]
