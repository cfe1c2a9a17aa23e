"""Sequential calibration: each target linear gets the statistics of the inputs it sees when the model runs on the
calibration data with the targets before it already pruned (SparseGPT's and Wanda's sequential setting).

Model-agnostic: one forward pass records the order in which the targets are called; consecutive calls on the same
input tensor (q, k, v of an attention block) form a group, pruned together after one pass over the data. Each pass
stops (by an exception from a hook) once the group's last call has been seen, so the rest of the model does not run.
A batch is a model input: a tuple or list is passed as model(*batch), a mapping as model(**batch), anything else
as model(batch).

Block by block: when the model is a chain of repeated blocks (an nn.ModuleList whose blocks each hold targets,
each block fed the previous one's output and the same other arguments -- every transformer stack), the inputs of
the first block are captured once, and each block is then calibrated on its own inputs alone and run once to make
the next block's: linear in depth instead of quadratic, and with `device` set, only the block being calibrated
(and the activations) sit on that device. The statistics are the same as the whole-model passes would give.
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from .calibration import InputStats


class _GroupDone(Exception):
    """Raised by a hook to end a forward pass early: the rest of the model is not needed for this group."""


def run_model(model: nn.Module, batch) -> None:
    if isinstance(batch, Mapping):  # dict, or e.g. a tokenizer's BatchEncoding
        model(**batch)
    elif isinstance(batch, (tuple, list)):
        model(*batch)
    else:
        model(batch)


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
                     progress: Callable[[Iterable], Iterable] = iter,
                     device: Optional[torch.device] = None,
                     on_block: Optional[Callable[[nn.Module, List[Any], Callable[[Any], Tensor]], None]] = None
                     ) -> Iterator[Dict[str, InputStats]]:
    """Yield, group by group in forward order, {name: InputStats} for the `linears` of that group. The caller
    prunes (swaps) the group before asking for the next, so later groups see the pruned earlier ones. Linears
    the model never calls on the first batch are not yielded. `device`: where each block is calibrated (moved there
    and back one at a time); only with a block chain (see the module docstring), else it is an error.
    on_block(block, inputs, forward): called with each block of a chain before its linears are calibrated (the
    block as yet unpruned, fed by the pruned blocks before it), `forward(input)` giving its hidden output."""
    batches = list(batches)
    if not batches:
        raise ValueError("calibration must hold at least one model input")
    blocks = find_blocks(model, linears)
    with _block_calls(blocks) as block_calls:  # the block structure is read off the same tracing pass
        groups, calls = trace_calls(model, linears, batches[0])
    span = _block_span(blocks, linears, groups) if blocks is not None else None
    if span is None or not _is_block_chain(block_calls, len(blocks)):
        if device is not None:
            raise ValueError("calibration_device: the model is not a chain of repeated blocks (an nn.ModuleList "
                             "whose blocks each take the previous one's output), so it cannot be calibrated block "
                             "by block")
        span = (len(groups), len(groups))
    first, last = span  # groups[first:last] are the blocks' own, calibrated block by block
    for names in progress(groups[:first]):
        yield collect_stats(model, {n: linears[n] for n in names}, batches, gram, calls)
    if first < last:
        yield from _blockwise_stats(model, blocks, linears, batches, gram, progress, device, on_block)
    for names in progress(groups[last:]):
        yield collect_stats(model, {n: linears[n] for n in names}, batches, gram, calls)


# ----------------------------------------------------------------------------------------- block by block ------
BlockInput = Tuple[tuple, dict]  # (args, kwargs) of one block call; args[0] is the hidden state


def _run_block(block: nn.Module, inp: BlockInput):
    return block(*inp[0], **inp[1])


def _hidden(output) -> Tensor:
    """A block's hidden-state output: the output itself, or the first element of a tuple/list (HF layers)."""
    return output[0] if isinstance(output, (tuple, list)) else output


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


def _is_block_chain(calls: List[Tuple[int, tuple, dict, Any]], n_blocks: int) -> bool:
    """Whether one forward's block calls (_block_calls) call each block once, in order, block i + 1 on block i's
    hidden output and with the very same other arguments as block 0 -- what calibrating blocks on their captured
    inputs assumes."""
    if [c[0] for c in calls] != list(range(n_blocks)) or not calls[0][1]:
        return False
    _, args0, kwargs0, _ = calls[0]
    for (_, _, _, out), (_, args, kwargs, _) in zip(calls, calls[1:]):
        same_rest = len(args) == len(args0) and all(a is b for a, b in zip(args[1:], args0[1:]))
        same_kwargs = kwargs.keys() == kwargs0.keys() and all(kwargs[k] is kwargs0[k] for k in kwargs)
        if not (args[0] is _hidden(out) and same_rest and same_kwargs):
            return False
    return True


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


def _first_block_inputs(model: nn.Module, block: nn.Module, batches: Sequence) -> List[BlockInput]:
    inputs: List[BlockInput] = []

    def capture(mod, args, kwargs):
        inputs.append((args, kwargs))
        raise _GroupDone

    handle = block.register_forward_pre_hook(capture, with_kwargs=True)
    try:
        for batch in batches:
            try:
                run_model(model, batch)
            except _GroupDone:
                pass
    finally:
        handle.remove()
    return inputs


def _blockwise_stats(model, blocks, linears, batches, gram, progress, device,
                     on_block=None) -> Iterator[Dict[str, InputStats]]:
    inputs = [_to(inp, device) for inp in _first_block_inputs(model, blocks[0], batches)]
    for block in progress(blocks):
        home = next(block.parameters()).device
        block.to(device or home)
        in_block = {id(m) for m in block.modules()}
        mine = {name: mod for name, mod in linears.items() if id(mod) in in_block}
        if on_block is not None:
            on_block(block, inputs, lambda inp, block=block: _hidden(_run_block(block, inp)))
        groups, calls = trace_calls(block, mine, inputs[0], _run_block)
        for names in groups:
            yield collect_stats(block, {n: mine[n] for n in names}, inputs, gram, calls, _run_block)
        # the block as pruned so far (the caller swapped its groups) makes the next block's inputs
        inputs = [((_hidden(_run_block(block, inp)),) + tuple(inp[0][1:]), inp[1]) for inp in inputs]
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
