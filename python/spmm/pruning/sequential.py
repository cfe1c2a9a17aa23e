"""Sequential calibration: each target linear gets the statistics of the inputs it sees when the model runs on the
calibration data with the targets before it already pruned (SparseGPT's and Wanda's sequential setting).

Model-agnostic: one forward pass records the order in which the targets are called; consecutive calls on the same
input tensor (q, k, v of an attention block) form a group, pruned together after one pass over the data. Each pass
stops (by an exception from a hook) once the group's last call has been seen, so the rest of the model does not run.
A batch is a model input: a tuple or list is passed as model(*batch), a mapping as model(**batch), anything else
as model(batch).
"""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import contextmanager
from typing import Callable, Dict, Iterable, Iterator, List, Sequence, Tuple

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


def trace_calls(model: nn.Module, linears: Dict[str, nn.Module], batch) -> Tuple[List[List[str]], Dict[str, int]]:
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
        run_model(model, batch)
    return groups, calls


def collect_stats(model: nn.Module, group: Dict[str, nn.Module], batches: Sequence, gram: bool,
                  calls: Dict[str, int]) -> Dict[str, InputStats]:
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
                run_model(model, batch)
            except _GroupDone:
                pass
    return stats


def sequential_stats(model: nn.Module, linears: Dict[str, nn.Module], batches: Iterable, gram: bool,
                     progress: Callable[[Iterable], Iterable] = iter) -> Iterator[Dict[str, InputStats]]:
    """Yield, group by group in forward order, {name: InputStats} for the `linears` of that group. The caller
    prunes (swaps) the group before asking for the next, so later groups see the pruned earlier ones. Linears
    the model never calls on the first batch are not yielded."""
    batches = list(batches)
    if not batches:
        raise ValueError("calibration must hold at least one model input")
    groups, calls = trace_calls(model, linears, batches[0])
    for names in progress(groups):
        yield collect_stats(model, {n: linears[n] for n in names}, batches, gram, calls)


@contextmanager
def _hooks(modules: Iterable[nn.Module], hook):
    """Forward pre-hooks (with kwargs) on `modules` for the duration of a with-block."""
    handles = [m.register_forward_pre_hook(hook, with_kwargs=True) for m in modules]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()
