"""Shared test helpers (imported by the test modules as `from conftest import ...`)."""

from __future__ import annotations

import pytest
import torch

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
_INT_VIEW = {torch.float32: torch.int32, torch.float16: torch.int16, torch.bfloat16: torch.int16,
             torch.float64: torch.int64}


def assert_bitwise_equal(actual: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal bit for bit (torch.equal alone treats -0.0 == +0.0)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, (actual.dtype, actual.shape,
                                                                              expected.dtype, expected.shape)
    view = _INT_VIEW.get(actual.dtype, actual.dtype)  # integer tensors compare as they are
    diff = actual.contiguous().view(view) != expected.contiguous().view(view)
    assert not bool(diff.any()), f"{int(diff.sum())} elements differ, first at {diff.nonzero()[0].tolist()}"


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def random_weight(m: int, k: int, dtype=torch.float32, g=None, zeros: float = 0.1) -> torch.Tensor:
    """Normal weight with a fraction of exact zeros and some -0.0, so packers meet both."""
    w = torch.randn(m, k, generator=g)
    w[torch.rand(m, k, generator=g) < zeros] = 0.0
    w[torch.rand(m, k, generator=g) < zeros / 2] = -0.0
    return w.to(dtype)


def int_weight(m: int, k: int, dtype=torch.float32, g=None, lo: int = -2, hi: int = 2) -> torch.Tensor:
    """Small-integer values: every product and sum is exact in fp32 (and fits fp16/bf16), so results compare exactly."""
    return torch.randint(lo, hi + 1, (m, k), generator=g).to(dtype)


def random_24_mask(m: int, k: int, g=None) -> torch.Tensor:
    """A 2:4 keep-mask whose groups keep 0, 1 or 2 elements at random positions."""
    scores = torch.rand(m, k // 4, 4, generator=g)
    kept = torch.randint(0, 3, (m, k // 4, 1), generator=g)
    rank = scores.argsort(dim=-1).argsort(dim=-1)
    return (rank < kept).reshape(m, k)


def masked(w: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask, w, torch.zeros_like(w))


def cuda_int_case(m: int, k: int, n: int, dtype, seed: int):
    """Small-integer 2:4 weight, its mask, x [n, k] and bias, on the GPU: exact under fp32 accumulation."""
    g = gen(seed)
    w, mask = int_weight(m, k, dtype, g), random_24_mask(m, k, g)
    x = torch.randint(-3, 4, (n, k), generator=g).to(dtype)
    bias = int_weight(1, m, dtype, g)[0]
    return w.cuda(), mask.cuda(), x.cuda(), bias.cuda()


def masked_reference(x, w, mask, bias=None):
    """fp32 torch.matmul on the dense masked weight (+ bias), rounded once to x's dtype."""
    y = x.float() @ masked(w, mask).float().T
    return (y + bias.float() if bias is not None else y).to(x.dtype)


def assert_exact_on_leading_dims_strided_x_and_graph(mm, w, mask, x, bias):
    """mm(x) = x @ W.T + bias for one packed weight: exact against masked_reference with x under leading dims,
    with a column-strided x, and replayed from a CUDA graph after x changes in place. x: [N, K], N % 4 == 0."""
    n, k = x.shape
    expected = masked_reference(x, w, mask, bias)
    assert torch.equal(mm(x.reshape(4, n // 4, k)), expected.reshape(4, n // 4, -1))
    strided = torch.stack([x, x], dim=-1).reshape(n, 2 * k)[:, ::2]
    assert not strided.is_contiguous() and torch.equal(mm(strided), expected)
    static_x = x.clone()
    mm(static_x)  # warm-up outside capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = mm(static_x)
    static_x.copy_(-x)
    graph.replay()
    torch.cuda.synchronize()
    assert torch.equal(out, masked_reference(-x, w, mask, bias))


def random_mask(m: int, k: int, density: float, g=None) -> torch.Tensor:
    return torch.rand(m, k, generator=g) < density


def spense_args(w, mask, dense_rows):
    """Dense rows first, then the 2:4 rows: spense_mm's operands and the dense masked weight they stand for."""
    from spmm import ops

    m = w.shape[0]
    is_dense = torch.zeros(m, dtype=torch.bool)
    is_dense[dense_rows] = True
    order = torch.cat([torch.nonzero(is_dense).flatten(), torch.nonzero(~is_dense).flatten()])
    values, meta = ops.sparse24_compress(w[~is_dense], mask[~is_dense])
    full = torch.where(is_dense[:, None], w, masked(w, mask))
    return (w[is_dense].contiguous(), values, meta, order.to(torch.int32)), full


def pytest_collection_modifyitems(config, items):
    """Every test of a GPU test file (tests/test_cuda_*.py) carries the `gpu` marker: the device scripts select the
    GPU tests by it (scripts/device_check.sh: pytest -m gpu), so an unmarked one would never run on a GPU."""
    unmarked = [item.nodeid for item in items
                if item.path.name.startswith("test_cuda_") and item.get_closest_marker("gpu") is None]
    if unmarked:
        raise pytest.UsageError(f"GPU tests without the `gpu` marker (add pytestmark = pytest.mark.gpu): {unmarked}")


@pytest.fixture(autouse=True)
def _isolated():
    torch.manual_seed(0)  # layers built with nn.Linear's own init: same weights whatever ran before
    yield
    torch._dynamo.reset()  # compiled graphs of one test must not count against another's recompile limit


@pytest.fixture
def cublas_fp32_reductions():
    """cuBLAS sums in fp32 only (torch lets it reduce split-K partials in fp16/bf16 by default): integer-valued inputs
    then give exact results, as on the 2:4 kernels, for tests that compare cuBLAS's rows with torch.equal."""
    flags = torch.backends.cuda.matmul
    saved = flags.allow_fp16_reduced_precision_reduction, flags.allow_bf16_reduced_precision_reduction
    flags.allow_fp16_reduced_precision_reduction = flags.allow_bf16_reduced_precision_reduction = False
    yield
    flags.allow_fp16_reduced_precision_reduction, flags.allow_bf16_reduced_precision_reduction = saved


def cuda_kernel_names(fn) -> list:
    """Names of the CUDA kernels fn() launches (torch.profiler), to tell which kernel a dispatch rule picked:
    "decode_mm_kernel" (the 2:4 decode kernel), "transpose_bias_kernel" (the Ampere 2:4 GEMM's epilogue),
    "cutlass" names (the CUTLASS GEMMs), cuBLAS's names."""
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up: lazy inits and packs stay out of the profile
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return [e.name for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA]


def sparse24_path(names) -> str:
    """Which 2:4 kernel ran, from cuda_kernel_names: "decode", "sm80" (the Ampere GEMM, known by its epilogue kernel)
    or "sm90" (the Hopper GEMM: a CUTLASS sparse kernel, whose name carries its Sparse mainloop types; cuBLAS's dense
    kernels, which Spense runs beside it, carry none)."""
    if any("decode_mm_kernel" in n for n in names):
        return "decode"
    if any("transpose_bias_kernel" in n for n in names):
        return "sm80"
    assert any("Sparse" in n for n in names), f"no 2:4 kernel among {names}"
    return "sm90"
