"""Sequential calibration: each target linear gets the statistics of the inputs it sees when the model runs on the
calibration data with the targets before it already pruned (SparseGPT's and Wanda's sequential setting).

Model-agnostic: one forward pass records the order in which the targets are called; consecutive calls on the same
input tensor (q, k, v of an attention block) form a group, pruned together after one pass over the data. Each pass
stops (by an exception from a hook) once the group's last call has been seen, so the rest of the model does not run.
A batch is a model input: a tuple or list is passed as model(*batch), a mapping as model(**batch), anything else
as model(batch).

Block by block: when the model is a chain of repeated blocks (an nn.ModuleList whose blocks each hold targets, each
block called once per forward, in order, on the previous one's hidden output -- every transformer stack), each
block is calibrated on its own inputs alone and run once to make the next block's: linear in depth instead of
quadratic, and with `device` set, only the block being calibrated (and the activations) sit on that device. The
other arguments of every block (attention masks, position embeddings, keyword arguments; they may differ from block
to block, as with alternating sliding-window layers) are captured in one pass per batch in which the blocks are
bypassed; key/value cache objects (Hugging Face `Cache`s: anything with `update` and `get_seq_length`) are dropped
and `use_cache` set to False, since a block run again on the same inputs must not append to a cache. The
statistics are the same as the whole-model passes would give; a model whose bypassed pass hands the blocks other
arguments than its real forward does is calibrated by whole-model passes instead.

Output error: with `errors` given, each pruned layer's relative output error on its calibration inputs,
||y - y0|| / ||y0|| over every call (y from the layer as pruned, y0 from the original), is measured in the next pass
that runs all the data through it (a last pass over the model for the layers no later pass reaches).
"""

from __future__ import annotations

import copy

from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .calibration import InputStats


class _GroupDone(Exception):
    """Raised by a hook to end a forward pass early: the rest of the model is not needed for this group."""


def _fresh(obj):
    """A mapping argument as a shallow copy (same values, same type): models such as SentenceTransformer write their
    outputs into the feature dict they are given, and calibration runs each batch several times, each pass on the
    batch as given."""
    return copy.copy(obj) if isinstance(obj, Mapping) else obj


def run_model(model: nn.Module, batch) -> None:
    if isinstance(batch, Mapping):  # dict, or e.g. a tokenizer's BatchEncoding
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*(_fresh(arg) for arg in batch))
    else:
        model(_fresh(batch))


def _input_of(args, kwargs) -> Tensor:
    return args[0] if args else kwargs["input"]


def trace_calls(model: nn.Module, linears: Dict[str, nn.Module], batch,
                run: Callable[[nn.Module, Any], None] = run_model) -> Tuple[List[List[str]], Dict[str, int]]:
    """Run the model once on `batch`. Returns the groups of `linears` (name -> module, modules distinct) in the order
    of their first calls, a group being a run of consecutive first calls on the very same input tensor, and how
    often each linear was called. Linears never called are in no group."""
    name_of = {id(mod): name for name, mod in linears.items()}
    groups: List[List[str]] = []
    calls = dict.fromkeys(linears, 0)
    last_input = None  # held, so that its id cannot be reused by a new tensor while we compare against it

    def record(mod, args, kwargs):
        nonlocal last_input
        name, x = name_of[id(mod)], _input_of(args, kwargs)
        calls[name] += 1
        if calls[name] > 1:
            return
        if groups and x is last_input:
            groups[-1].append(name)
        else:
            groups.append([name])
        last_input = x

    with _hooks(linears.values(), record):
        run(model, batch)
    return groups, calls


def collect_stats(model: nn.Module, group: Dict[str, nn.Module], batches: Sequence, gram: bool,
                  calls: Dict[str, int], run: Callable[[nn.Module, Any], None] = run_model) -> Dict[str, InputStats]:
    """InputStats of each linear of `group` over all `batches`. `calls[name]`: how often the model calls it per
    batch; once every member has had all its calls, the pass ends."""
    stats = {name: InputStats(mod.in_features, gram) for name, mod in group.items()}
    name_of = {id(mod): name for name, mod in group.items()}
    seen: Dict[str, int] = {}

    def accumulate(mod, args, kwargs):
        name = name_of[id(mod)]
        stats[name].add(_input_of(args, kwargs))
        seen[name] = seen.get(name, 0) + 1
        if all(seen.get(n, 0) >= calls[n] for n in group):
            raise _GroupDone

    with _hooks(group.values(), accumulate):
        for batch in batches:
            seen.clear()
            try:
                run(model, batch)
            except _GroupDone:
                pass
    return stats


def sequential_stats(model: nn.Module, linears: Dict[str, nn.Module], batches: Iterable, gram: bool,
                     progress: Callable[[Iterable], Iterable] = iter, device: Optional[torch.device] = None,
                     errors: Optional[Dict[str, float]] = None,
                     on_block: Optional[Callable[[nn.Module, List[Any], Callable[[Any], Tensor]], None]] = None
                     ) -> Iterator[Dict[str, InputStats]]:
    """Yield, group by group in forward order, {name: InputStats} for the `linears` of that group. The caller
    prunes (swaps) the group before asking for the next, so later groups see the pruned earlier ones. Linears
    the model never calls on the first batch are not yielded. `device`: where each block is calibrated (moved there
    and back one at a time); only with a block chain (see the module docstring), else it is an error. `errors`: a
    dict that receives, for every swapped linear, its relative output error on the calibration data (filled once
    the generator is exhausted). on_block(block, inputs, forward): called with each block of a chain before its
    linears are calibrated (the block as yet unpruned, fed by the pruned blocks before it), `forward(input)` giving
    its hidden output."""
    batches = list(batches)
    if not batches:
        raise ValueError("calibration must hold at least one model input")
    blocks = find_blocks(model, linears)
    with _block_calls(blocks) as block_calls:  # the block structure is read off the same tracing pass
        groups, calls = trace_calls(model, linears, batches[0])
    span = _block_span(blocks, linears, groups) if blocks is not None else None
    if span is None or not _is_block_chain(model, blocks, block_calls, batches[0]):
        if device is not None:
            raise ValueError("calibration_device: the model is not a chain of repeated blocks (an nn.ModuleList "
                             "whose blocks each take the previous one's output), so it cannot be calibrated block "
                             "by block")
        span = (len(groups), len(groups))
    meter = _OutputErrors(model, linears, calls, len(batches), errors)
    first, last = span  # groups[first:last] are the blocks' own, calibrated block by block
    for names in progress(groups[:first]):
        with meter.measuring():
            stats = collect_stats(model, {n: linears[n] for n in names}, batches, gram, calls)
        yield stats
        meter.swapped(names)
    if first < last:
        outputs = [call[3] for call in block_calls]
        yield from _blockwise_stats(model, blocks, outputs, linears, batches, gram, progress, device, meter, on_block)
    for names in progress(groups[last:]):
        with meter.measuring():
            stats = collect_stats(model, {n: linears[n] for n in names}, batches, gram, calls)
        yield stats
        meter.swapped(names)
    meter.finish(batches)


# ----------------------------------------------------------------------------------------- output error ------
class _OutputErrors:
    """Measures swapped linears against their originals: per name, sqrt(sum ||y - y0||^2 / sum ||y0||^2) over all its
    calls in one pass over the data, y the output of the module now at that name, y0 the original's on the same
    input. `measuring()` watches the layers swapped but not yet measured during one pass; a layer whose calls in
    that pass were not all seen (the pass stopped early, or did not reach it) waits for a later one."""

    def __init__(self, model: nn.Module, originals: Dict[str, nn.Module], calls: Dict[str, int], n_batches: int,
                 errors: Optional[Dict[str, float]]):
        self.model, self.originals, self.calls, self.n_batches = model, originals, calls, n_batches
        self.errors = errors
        self.pending: List[str] = []

    def swapped(self, names: List[str]) -> None:
        if self.errors is not None:  # an unswapped layer (the format could not take it) has nothing to measure
            self.pending += [n for n in names if self.model.get_submodule(n) is not self.originals[n]]

    @contextmanager
    def measuring(self):
        sums = {name: [0.0, 0.0, 0] for name in self.pending}  # squared error, squared reference, calls

        def hook(name):
            original = self.originals[name]

            def accumulate(mod, args, kwargs, output):
                reference = original.forward(_input_of(args, kwargs))  # forward(): not the original's own hooks
                sums[name][0] += (output.double() - reference.double()).square().sum()
                sums[name][1] += reference.double().square().sum()
                sums[name][2] += 1
            return accumulate

        handles = [self.model.get_submodule(n).register_forward_hook(hook(n), with_kwargs=True) for n in sums]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()
        for name, (error, reference, count) in sums.items():
            if count == self.calls[name] * self.n_batches:
                self.errors[name] = _relative(float(error), float(reference))
                self.pending.remove(name)

    def finish(self, batches: Sequence) -> None:
        """One more pass over the model for the layers no pass has measured yet (the last groups)."""
        if self.pending:
            with self.measuring():
                for batch in batches:
                    run_model(self.model, batch)


def _relative(error: float, reference: float) -> float:
    if reference > 0:
        return (error / reference) ** 0.5
    return 0.0 if error == 0 else float("inf")


# ----------------------------------------------------------------------------------------- block by block ------
BlockInput = Tuple[tuple, dict]  # (args, kwargs) of one block call; args[0] is the hidden state


def _run_block(block: nn.Module, inp: BlockInput):
    return block(*inp[0], **inp[1])


def _hidden(output) -> Tensor:
    """A block's hidden-state output: the output itself, or the first element of a tuple/list (HF layers)."""
    return output[0] if isinstance(output, (tuple, list)) else output


def _shaped_like(output, hidden: Tensor):
    """`hidden` in the structure of a block's `output`: itself, or first in a tuple/list padded with None."""
    if isinstance(output, (tuple, list)):
        return type(output)((hidden,) + (None,) * (len(output) - 1))
    return hidden


def find_blocks(model: nn.Module, linears: Dict[str, nn.Module]) -> Optional[nn.ModuleList]:
    """The outermost nn.ModuleList of 2+ modules that each hold some of `linears` (first in module order)."""
    ids = {id(m) for m in linears.values()}
    for mod in model.modules():
        if isinstance(mod, nn.ModuleList) and len(mod) >= 2 and all(
                any(id(sub) in ids for sub in block.modules()) for block in mod):
            return mod
    return None


def _block_span(blocks: nn.ModuleList, linears: Dict[str, nn.Module], groups: List[List[str]]):
    """(first, last): the blocks' groups are groups[first:last], every other group runs before or after them all
    (e.g. an embedding projection, a head); None if a group mixes or interleaves with them."""
    inside = {id(m) for block in blocks for m in block.modules()}
    kinds = [{id(linears[n]) in inside for n in names} for names in groups]
    if any(len(k) > 1 for k in kinds) or {True} not in kinds:
        return None
    first = kinds.index({True})
    last = len(kinds) - kinds[::-1].index({True})
    return (first, last) if all(k == {True} for k in kinds[first:last]) else None


@contextmanager
def _block_calls(blocks: Optional[nn.ModuleList]):
    """Inside the with-block, records every call of `blocks` (none if None) as (index, args, kwargs, output)."""
    calls: List[Tuple[int, tuple, dict, Any]] = []
    if blocks is None:
        yield calls
        return

    def pre(index):
        return lambda mod, args, kwargs: calls.append((index, args, kwargs, None))

    def post(mod, args, kwargs, output):
        calls[-1] = calls[-1][:3] + (output,)

    handles = [b.register_forward_pre_hook(pre(i), with_kwargs=True) for i, b in enumerate(blocks)]
    handles += [b.register_forward_hook(post, with_kwargs=True) for b in blocks]
    try:
        yield calls
    finally:
        for h in handles:
            h.remove()


def _is_block_chain(model: nn.Module, blocks: nn.ModuleList, calls: List[Tuple[int, tuple, dict, Any]],
                    batch) -> bool:
    """Whether one forward's block calls (_block_calls) call each block once, in order, block i + 1 on block i's
    hidden output (positional), and whether a pass with the blocks bypassed hands each block the same other
    arguments as that real forward did -- what calibrating blocks on captured inputs assumes."""
    if [c[0] for c in calls] != list(range(len(blocks))) or not all(c[1] for c in calls):
        return False
    if not all(args[0] is _hidden(out) for (_, _, _, out), (_, args, _, _) in zip(calls, calls[1:])):
        return False
    try:
        _, rests = _block_inputs(model, blocks, [c[3] for c in calls], [batch])[0]
    except Exception:  # the model's code between blocks needs what the blocks compute: not a plain chain
        return False
    return _same(rests, [_without_caches((args[1:], kwargs)) for _, args, kwargs, _ in calls])


def _is_cache(obj) -> bool:
    return callable(getattr(obj, "update", None)) and callable(getattr(obj, "get_seq_length", None))


def _without_caches(obj, key: Optional[str] = None):
    """obj (nested tuples/lists/dicts) with key/value cache objects replaced by None and `use_cache` by False."""
    if key == "use_cache" and isinstance(obj, bool):
        return False
    if _is_cache(obj):
        return None
    if isinstance(obj, (tuple, list)):
        return type(obj)(_without_caches(o) for o in obj)
    if isinstance(obj, dict):
        return {k: _without_caches(v, k) for k, v in obj.items()}
    return obj


def _same(a, b) -> bool:
    """Equal values: tensors by torch.equal, containers element by element, anything else by identity or ==."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.shape == b.shape and a.dtype == b.dtype
                and a.device == b.device and torch.equal(a, b))
    if isinstance(a, (tuple, list)) or isinstance(b, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) or isinstance(b, dict):
        return type(a) is type(b) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # an object whose == is not a plain truth value
        return False


def _to(obj, device: Optional[torch.device]):
    """obj with every tensor in it (nested tuples/lists/dicts) moved to device (None: unchanged)."""
    if device is None:
        return obj
    if isinstance(obj, Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_to(o, device) for o in obj)
    if isinstance(obj, dict):
        return {k: _to(v, device) for k, v in obj.items()}
    return obj


@contextmanager
def _bypassed(blocks: nn.ModuleList, make_forward: Callable[[int], Callable]):
    """Inside the with-block, block i runs make_forward(i) instead of its forward."""
    saved = [block.__dict__.get("forward") for block in blocks]  # a forward set on the instance is put back
    for i, block in enumerate(blocks):
        block.forward = make_forward(i)
    try:
        yield
    finally:
        for block, forward in zip(blocks, saved):
            if forward is None:
                del block.forward
            else:
                block.forward = forward


def _block_inputs(model: nn.Module, blocks: nn.ModuleList, outputs: List[Any],
                  batches: Sequence) -> List[Tuple[Tensor, List[BlockInput]]]:
    """Per batch: the first block's hidden input and every block's other arguments (caches dropped), from one pass
    in which each block returns its hidden input unchanged (shaped like its traced output) and the pass stops at the
    last block. No block's own code runs."""
    captured: List[Tuple[Tensor, List[BlockInput]]] = []

    def make_forward(index):
        def bypass(*args, **kwargs):
            if index == 0:
                captured.append((args[0], []))
            captured[-1][1].append(_without_caches((tuple(args[1:]), kwargs)))
            if index == len(blocks) - 1:
                raise _GroupDone
            return _shaped_like(outputs[index], args[0])
        return bypass

    with _bypassed(blocks, make_forward):
        for i, batch in enumerate(batches):
            try:
                run_model(model, batch)
            except _GroupDone:
                pass
            if len(captured) != i + 1 or len(captured[-1][1]) != len(blocks):
                raise ValueError(f"calibration: batch {i} does not call each of the {len(blocks)} blocks once, in "
                                 f"order, as the first batch does")
    return captured


def _blockwise_stats(model, blocks, outputs, linears, batches, gram, progress, device,
                     meter: _OutputErrors, on_block=None) -> Iterator[Dict[str, InputStats]]:
    with meter.measuring():  # the layers before the blocks run on all the data in this pass
        captured = _block_inputs(model, blocks, outputs, batches)
    hidden = [_to(h, device) for h, _ in captured]
    for index in progress(range(len(blocks))):
        block = blocks[index]
        inputs = [((h,) + _to(rests[index][0], device), _to(rests[index][1], device))
                  for h, (_, rests) in zip(hidden, captured)]
        home = next(block.parameters()).device
        block.to(device or home)
        in_block = {id(m) for m in block.modules()}
        mine = {name: mod for name, mod in linears.items() if id(mod) in in_block}
        if on_block is not None:
            on_block(block, inputs, lambda inp, block=block: _hidden(_run_block(block, inp)))
        groups, calls = trace_calls(block, mine, inputs[0], _run_block)
        for names in groups:
            with meter.measuring():
                stats = collect_stats(block, {n: mine[n] for n in names}, inputs, gram, calls, _run_block)
            yield stats
            meter.swapped(names)
        # the block as pruned so far (the caller swapped its groups) makes the next block's inputs
        with meter.measuring():
            hidden = [_hidden(_run_block(block, inp)) for inp in inputs]
        block.to(home)
        for mod in mine.values():  # the originals the caller swapped out are no longer in the block: move them too
            mod.to(home)


@contextmanager
def _hooks(modules: Iterable[nn.Module], hook):
    """Forward pre-hooks (with kwargs) on `modules` for the duration of a with-block."""
    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
