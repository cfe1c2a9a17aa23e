"""spmm.sparsify: swap a model's nn.Linear modules for sparse layers, as a config says (torchao's sparsify_ shape:
each config type maps to a handler that turns one nn.Linear into its replacement). The module is not named
sparsify.py, so that the function spmm.sparsify does not hide it."""

from __future__ import annotations

import dataclasses
import sys
import warnings
from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Type

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from .formats import Sparse24Weight, SpenseWeight, TiledCSLWeight
from .formats.tiled_csl import check_tile
from .nn import Sparse24Linear, SpenseLinear, TiledCSLLinear
from .ops import SPENSE_ROW_TILE
from .pruning import InputStats, allocate_rows, block_sensitivity, prune, pruner_needs, row_scores, top_rows
from .pruning import uniform_row_count
from .pruning.dense_rows import BUDGETS, check_strategy, strategy_needs
from .pruning.registry import parse_sparsity
from .pruning.sequential import sequential_stats


_FIELD_TYPES = {"str": str, "bool": bool, "int": int, "float": (int, float)}


def _check_field_types(config) -> None:
    """A config field of the wrong type is a TypeError naming it (a bool is no number here)."""
    for field in dataclasses.fields(config):
        name = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
        want, value = _FIELD_TYPES.get(name), getattr(config, field.name)
        if want is not None and not (isinstance(value, want) and (want is bool or not isinstance(value, bool))):
            raise TypeError(f"{type(config).__name__}.{field.name} must be {'an' if name[0] in 'aeiou' else 'a'} "
                            f"{name}, got {type(value).__name__} {value!r}")


@dataclass(frozen=True)
class Sparse24Config:
    """2:4 sparsity, every layer at 50%. pruner: "magnitude", "wanda" or "sparsegpt" (the last two need
    calibration data: spmm.sparsify(..., calibration=...)), or any name registered with register_pruner.
    prefill_kernel: on CUDA (Hopper, or Ampere-class GPUs), also keep a CUTLASS prefill GEMM's layout of each weight
    (what runs above 8-16 tokens on Hopper, 32 on Ampere: spmm.ops.sparse24_decode_max_tokens; on Hopper only its
    metadata, 0.06 of the dense bytes, as it reads the canonical values; on Ampere a padded copy, about 0.56); False
    saves that memory where speed above those token counts does not matter (the decode kernel then runs every N, 64
    tokens at a time)."""

    pruner: str = "magnitude"
    prefill_kernel: bool = True

    def __post_init__(self):
        _check_field_types(self)


@dataclass(frozen=True)
class TiledCSLConfig:
    """Unstructured sparsity stored as Tiled-CSL. How exactly `sparsity` is met depends on the pruner: magnitude
    and sparsegpt zero round(sparsity * numel) weights per matrix, wanda round(sparsity * K) per output row."""

    sparsity: float = 0.8
    pruner: str = "magnitude"
    tile_m: int = 256
    tile_k: int = 64

    def __post_init__(self):
        _check_field_types(self)
        if isinstance(parse_sparsity(self.sparsity), tuple):
            raise ValueError(f"TiledCSLConfig.sparsity must be a float in [0, 1], got {self.sparsity!r}")
        try:
            check_tile(self.tile_m, self.tile_k)
        except ValueError as e:
            raise ValueError(f"TiledCSLConfig.{e}") from None


@dataclass(frozen=True)
class SpenseConfig:
    """2:4 sparsity except some output rows of each layer, which stay dense (in_features % 4 == 0).

    The 2:4 rows take the pruner's 2:4 mask (and SparseGPT's updated weights); the dense rows keep the original
    weights. Every layer's dense row count is a multiple of `tile` (or all its rows); the default is the row tile
    of the CUDA kernels, spmm.ops.SPENSE_ROW_TILE.

    strategy, which rows stay dense (the criteria in full: spmm.pruning.dense_rows):
      "error": the rows whose 2:4 pruning changes the layer's output most on the calibration inputs (exact, from
        their Gram matrix); without calibration, the rows that lose the most weight energy;
      "block_error": that error as it reaches the output of the transformer block the layer sits in (each output
        unit weighted by the block output's measured sensitivity to it); needs calibration; the best on
        all-MiniLM-L6-v2 (README);
      "saliency": ranked before pruning, by the Wanda-style importance |w| * ||x_j|| of the weights 2:4 removes;
      "random": seeded (`seed`) random rows, the control.
    budget, how many rows each layer keeps dense:
      "uniform": dense_fraction of every layer's rows, to the nearest tile;
      "global": dense_fraction of all the Spense layers' weights (rows x in_features), placed where the
        strategy's scores say they remove the most error per weight, each layer between layer_bounds[0] and
        layer_bounds[1] of its rows. The total is met exactly in whole tiles when every layer's in_features is a
        multiple of the smallest and its out_features a multiple of the tile (else it falls short by less than
        one tile of the narrowest layer; spmm.pruning.allocate_rows). With calibration this costs a second pass:
        the first prunes every layer to plain 2:4 and keeps only each row's score.
    """

    dense_fraction: float = 0.25
    pruner: str = "magnitude"
    strategy: str = "error"
    budget: str = "uniform"
    tile: int = SPENSE_ROW_TILE
    layer_bounds: Tuple[float, float] = (0.0, 1.0)
    seed: int = 0

    def __post_init__(self):
        _check_field_types(self)
        if not 0.0 <= self.dense_fraction <= 1.0:
            raise ValueError(f"SpenseConfig.dense_fraction must lie in [0, 1], got {self.dense_fraction!r}")
        try:
            check_strategy(self.strategy)
        except ValueError as why:
            raise ValueError(f"SpenseConfig.{why}") from None
        if self.budget not in BUDGETS:
            raise ValueError(f"SpenseConfig.budget must be one of {BUDGETS}, got {self.budget!r}")
        if isinstance(self.tile, bool) or not isinstance(self.tile, int) or self.tile <= 0:
            raise ValueError(f"SpenseConfig.tile must be a positive integer, got {self.tile!r}")
        lo, hi = self.layer_bounds
        if not 0.0 <= lo <= self.dense_fraction <= hi <= 1.0:
            raise ValueError(f"SpenseConfig.layer_bounds must satisfy 0 <= low <= dense_fraction <= high <= 1, got "
                             f"{self.layer_bounds!r} with dense_fraction={self.dense_fraction!r}")


class Unsupported(Exception):
    """A handler's way to say 'this layer cannot take the format' (sparsify warns and skips it)."""


# A handler turns one nn.Linear into its replacement: handler(linear, config, stats=None), where stats are the
# InputStats of the linear's calibration inputs (only passed when sparsify runs with calibration).
Handler = Callable[..., nn.Module]
_HANDLERS: Dict[type, Handler] = {}


def register_handler(config_cls: Type) -> Callable[[Handler], Handler]:
    def wrap(fn: Handler) -> Handler:
        _HANDLERS[config_cls] = fn
        return fn

    return wrap


def _need_k_multiple_of_4(linear: nn.Linear) -> None:
    if linear.in_features % 4:
        raise Unsupported(f"2:4 needs in_features % 4 == 0, got in_features={linear.in_features}")


@register_handler(Sparse24Config)
def _sparse24(linear: nn.Linear, config: Sparse24Config, stats: Optional[InputStats] = None) -> nn.Module:
    _need_k_multiple_of_4(linear)
    result = prune(config.pruner, linear.weight, "2:4", stats)
    layer = Sparse24Linear.from_format(Sparse24Weight.from_dense(result.weight, result.mask), linear.bias)
    return layer if config.prefill_kernel else layer.use_prefill_kernel(False)


@register_handler(TiledCSLConfig)
def _tiled_csl(linear: nn.Linear, config: TiledCSLConfig, stats: Optional[InputStats] = None) -> nn.Module:
    result = prune(config.pruner, linear.weight, config.sparsity, stats)
    fmt = TiledCSLWeight.from_dense(result.weight, result.mask, tile_m=config.tile_m, tile_k=config.tile_k)
    return TiledCSLLinear.from_format(fmt, linear.bias)


def _spense_rows(linear: nn.Linear, config: SpenseConfig, stats: Optional[InputStats], sensitivity: Optional[Tensor],
                 seed: Optional[int]):
    """(result, pruned, scores): the pruner's 2:4 result, its weight with zeros where pruned, the rows' scores."""
    _need_k_multiple_of_4(linear)
    dense = linear.weight.detach()
    result = prune(config.pruner, dense, "2:4", stats)
    pruned = torch.where(result.mask, result.weight, 0)
    generator = torch.Generator().manual_seed(config.seed if seed is None else seed)
    return result, pruned, row_scores(config.strategy, dense, pruned, stats, sensitivity, generator)


@register_handler(SpenseConfig)
def _spense(linear: nn.Linear, config: SpenseConfig, stats: Optional[InputStats] = None,
            dense_rows: Optional[int] = None, sensitivity: Optional[Tensor] = None,
            seed: Optional[int] = None) -> nn.Module:
    """dense_rows: how many rows stay dense (the global budget's count; default the uniform budget's);
    sensitivity: block_error's per-output-unit sensitivity; seed: the random strategy's (default config.seed)."""
    result, _, scores = _spense_rows(linear, config, stats, sensitivity, seed)
    dense = linear.weight.detach()
    if dense_rows is None:
        dense_rows = uniform_row_count(dense.shape[0], config.dense_fraction, config.tile)
    rows = top_rows(scores, dense_rows)
    is_dense = torch.zeros(dense.shape[0], dtype=torch.bool, device=dense.device)
    is_dense[rows] = True
    weight = torch.where(is_dense[:, None], dense, result.weight)  # dense rows: the original, not updated, weights
    return SpenseLinear.from_format(SpenseWeight.from_dense(weight, rows, result.mask), linear.bias)


class _SpensePlan:
    """What the Spense handler gets per layer beyond its statistics: a seed of its own (the random strategy),
    block_error's sensitivities (measured block by block while calibrating, out_features floats per layer), and the
    global budget's row counts, from a first pass that keeps only each row's score."""

    def __init__(self, config: SpenseConfig, modules: Dict[str, nn.Module], targets: List[str]):
        self.config = config
        self.index: Dict[int, int] = {}  # id(linear) -> its place among the targets
        for name in targets:
            self.index.setdefault(id(modules[name]), len(self.index))
        self.sensitivity: Dict[int, Tensor] = {}
        self.counts: Optional[Dict[int, int]] = None

    def layer_kwargs(self, linear: nn.Module) -> dict:
        kwargs = {"seed": self.config.seed * 1_000_003 + self.index[id(linear)]}
        if id(linear) in self.sensitivity:
            kwargs["sensitivity"] = self.sensitivity[id(linear)]
        if self.counts is not None and id(linear) in self.counts:  # not there: a layer the handler skips
            kwargs["dense_rows"] = self.counts[id(linear)]
        return kwargs

    def on_block(self):
        """The calibration callback that measures sensitivities (sequential_stats' on_block), if the strategy
        needs them."""
        if self.config.strategy != "block_error":
            return None

        def measure(block: nn.Module, inputs, forward) -> None:
            mine = [mod for mod in block.modules() if id(mod) in self.index]
            for mod, sensitivity in block_sensitivity(inputs, forward, mine, seed=self.config.seed).items():
                self.sensitivity[id(mod)] = sensitivity

        return measure

    def score_rows(self, modules: Dict[str, nn.Module], targets: List[str], model: nn.Module,
                   calibration: Optional[list], gram: bool, device: Optional[torch.device]) -> None:
        """The global budget's first pass: every target pruned to plain 2:4, in the order (and on the inputs) the
        second pass will see, each row scored; then the counts."""
        scores: Dict[int, Tensor] = {}

        def score(linear: nn.Linear, config: SpenseConfig, stats: Optional[InputStats] = None, sensitivity=None,
                  seed=None) -> nn.Module:
            _, pruned, scores[id(linear)] = _spense_rows(linear, config, stats, sensitivity, seed)
            stand_in = nn.Linear(linear.in_features, linear.out_features, linear.bias is not None,
                                 device=pruned.device, dtype=pruned.dtype)
            stand_in.weight.copy_(pruned)
            if linear.bias is not None:
                stand_in.bias.copy_(linear.bias)
            return stand_in

        first = _Replacer(modules, score, self.config, self.layer_kwargs)
        if calibration is None:
            for name in _progress(targets, "spmm.sparsify (scoring rows)"):
                first.make(name)
        else:
            first.calibrated(model, targets, calibration, gram, device, self.on_block(), "scoring rows")
        layers = [i for i in self.index if i in scores]  # skipped layers take no part in the budget
        widths = {id(modules[name]): modules[name].in_features for name in targets}
        counts = allocate_rows([scores[i] for i in layers], [widths[i] for i in layers], self.config.dense_fraction,
                               self.config.tile, self.config.layer_bounds) if layers else []
        self.counts = dict(zip(layers, counts))
        self.sensitivity.clear()  # the second pass measures them again, on its own inputs


def _stats_needed(config) -> Optional[str]:
    """Which input statistics the config's pruning reads: None, "norms" or "gram" (see InputStats)."""
    name = getattr(config, "pruner", None)
    needs = pruner_needs(name) if name is not None else None
    if isinstance(config, SpenseConfig):  # and what its row choice reads
        order = (None, "norms", "gram")
        needs = max(needs, strategy_needs(config.strategy), key=order.index)
    return needs


def _unsupported_parent(parent: nn.Module) -> Optional[str]:
    if isinstance(parent, nn.MultiheadAttention):
        return "nn.MultiheadAttention reads its out_proj.weight directly"
    return None


def _progress(iterable, desc: str):
    return tqdm(iterable, desc=desc, disable=not sys.stderr.isatty())


@torch.no_grad()
def sparsify(model: nn.Module, config, filter_fn: Optional[Callable[[str, nn.Module], bool]] = None,
             calibration: Optional[Iterable] = None, calibration_device=None) -> nn.Module:
    """Replace, in place, every nn.Linear of `model` for which filter_fn(name, module) is true (default: all) by the
    sparse layer `config` asks for; layers the format cannot hold are skipped with a warning. Returns `model`
    (or, when `model` is itself an nn.Linear, its replacement).

    calibration: an iterable of model inputs (a tuple or list is passed as model(*batch), a mapping such as a
    tokenizer's output as model(**batch), anything else as model(batch)), needed by the calibrated pruners (wanda,
    sparsegpt). The targets are then pruned sequentially in forward order, each on the inputs it sees with the
    earlier targets already pruned, with the model in eval mode (restored afterwards). With any pruner, each
    swapped layer's relative output error on those inputs, ||y - y_dense|| / ||y_dense||, is measured and kept as
    `layer.output_error` (spmm.summary shows it; magnitude pruning itself does not read the data). Only input
    statistics are kept (K floats per layer for Wanda, a K x K matrix for SparseGPT), never activations. Every
    token row counts, so batch without padding (e.g. equal lengths per batch). Deterministic for given inputs:
    nothing random is drawn. Device-agnostic: statistics and pruning math run on the device of each layer's inputs.

    A model made of a chain of repeated blocks (an nn.ModuleList of transformer layers, each fed the previous one's
    output) is calibrated block by block: each block runs only on its own captured inputs, so the cost grows
    linearly with depth. calibration_device (e.g. "cuda"): calibrate each block there, moving one block at a time
    from and back to the model's device, for models that do not fit on it; the sparse layers end on the model's
    device.
    """
    handler = _HANDLERS.get(type(config))
    if handler is None:
        raise ValueError(f"config: no handler for {type(config).__name__}; known: {[c.__name__ for c in _HANDLERS]}")
    pruner = getattr(config, "pruner", None)
    if calibration is None and pruner is not None and pruner_needs(pruner) is not None:
        raise ValueError(f"calibration: {type(config).__name__}(pruner={pruner!r}) needs calibration data; pass "
                         f"calibration=<iterable of model inputs> to spmm.sparsify")
    if calibration is None and getattr(config, "strategy", None) == "block_error":
        raise ValueError("calibration: SpenseConfig(strategy='block_error') measures errors on calibration data; "
                         "pass calibration=<iterable of model inputs> to spmm.sparsify")
    needs = _stats_needed(config)

    modules = dict(model.named_modules(remove_duplicate=False))
    targets = [
        name for name, mod in modules.items()
        if isinstance(mod, nn.Linear) and (filter_fn is None or filter_fn(name, mod))
    ]
    device = None if calibration_device is None else torch.device(calibration_device)
    plan = _SpensePlan(config, modules, targets) if isinstance(config, SpenseConfig) else None
    if plan is not None and config.budget == "global":
        calibration = None if calibration is None else list(calibration)  # read twice
        plan.score_rows(modules, targets, model, calibration, needs == "gram", device)
    replace = _Replacer(modules, handler, config, plan.layer_kwargs if plan else None)
    if calibration is None:
        for name in _progress(targets, "spmm.sparsify"):
            replace.make(name)
    else:
        replace.calibrated(model, targets, calibration, gram=needs == "gram", device=device,
                           on_block=plan.on_block() if plan else None)
    for message in replace.skipped:
        warnings.warn(message, stacklevel=3)
    return replace.swap_all(targets)


class _Replacer:
    """Builds each target's replacement once (shared modules stay shared) and swaps it into the model."""

    def __init__(self, modules: Dict[str, nn.Module], handler: Handler, config,
                 layer_kwargs: Optional[Callable[[nn.Module], dict]] = None):
        self.modules, self.handler, self.config = modules, handler, config
        self.layer_kwargs = layer_kwargs  # more keyword arguments for the handler, per dense module
        self.made: Dict[int, Optional[nn.Module]] = {}  # id(dense) -> replacement (None: skipped)
        self.skipped: List[str] = []  # warnings for the caller

    def make(self, name: str, stats: Optional[InputStats] = None) -> Optional[nn.Module]:
        dense = self.modules[name]
        if id(dense) not in self.made:
            try:
                reason = _unsupported_parent(self._parent(name))
                if reason:
                    raise Unsupported(reason)
                kwargs = {} if stats is None else {"stats": stats}
                if self.layer_kwargs is not None:
                    kwargs.update(self.layer_kwargs(dense))
                self.made[id(dense)] = self.handler(dense, self.config, **kwargs)
            except Unsupported as why:
                self._skip(name, str(why))
            except (ValueError, TypeError) as e:
                if type(e) not in (ValueError, TypeError):  # a subclass keeps its type and gets a note
                    if hasattr(e, "add_note"):  # Python 3.11+
                        e.add_note(f"while sparsifying {name or '<root>'}")
                    raise
                raise type(e)(f"{name or '<root>'}: {e}") from e
        return self.made[id(dense)]

    def calibrated(self, model: nn.Module, targets: List[str], calibration: Iterable, gram: bool,
                   device: Optional[torch.device] = None, on_block=None, what: str = "calibrating") -> None:
        names_of: Dict[int, List[str]] = {}  # id(dense) -> its target names (a shared module has several)
        for name in targets:
            reason = _unsupported_parent(self._parent(name))
            if reason:  # skipped before any data flows
                self._skip(name, reason)
            elif id(self.modules[name]) not in self.made:
                names_of.setdefault(id(self.modules[name]), []).append(name)
        unique = {names[0]: self.modules[names[0]] for names in names_of.values()}
        home = {name: mod.weight.device for name, mod in unique.items()}  # where each sparse layer must end up
        was_training = {mod: mod.training for mod in model.modules()}
        model.eval()  # no dropout: calibration statistics are deterministic
        errors: Dict[str, float] = {}
        try:
            for group in sequential_stats(model, unique, calibration, gram,
                                          progress=lambda g: _progress(g, f"spmm.sparsify ({what})"),
                                          device=device, errors=errors, on_block=on_block):
                for name, stats in group.items():
                    made = self.make(name, stats)
                    if made is not None:  # later groups must see this layer pruned: run its dense equivalent
                        stand_in = made.to_dense_linear() if hasattr(made, "to_dense_linear") else made
                        for alias in names_of[id(unique[name])]:
                            self._set(alias, stand_in)
                        if made is not stand_in:
                            made.to(home[name])
        finally:
            for names in names_of.values():  # back to the originals; swap_all puts the replacements in
                for alias in names:
                    self._set(alias, self.modules[alias])
            for mod, training in was_training.items():
                mod.train(training)
        for name, dense in unique.items():
            if id(dense) not in self.made:
                self._skip(name, "it was never called on the calibration data")
            elif self.made[id(dense)] is not None and name in errors:
                self.made[id(dense)].output_error = errors[name]

    def swap_all(self, targets: List[str]) -> nn.Module:
        for name in targets:
            made = self.made.get(id(self.modules[name]))
            if made is None:
                continue
            if not name:  # the model is itself a Linear: nothing to swap it in, so hand back the replacement
                return made
            self._set(name, made)
        return self.modules[""]

    def _skip(self, name: str, why: str) -> None:
        self.skipped.append(f"spmm.sparsify: skipping {name!r} ({type(self.config).__name__}): {why}")
        self.made[id(self.modules[name])] = None

    def _parent(self, name: str) -> Optional[nn.Module]:
        return self.modules[name.rpartition(".")[0]] if name else None

    def _set(self, name: str, module: nn.Module) -> None:
        if name:
            parent_name, _, child = name.rpartition(".")
            setattr(self.modules[parent_name], child, module)
