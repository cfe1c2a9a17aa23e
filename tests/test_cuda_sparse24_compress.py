"""The CUDA 2:4 packer against the CPU reference packer: bit-identical output, same errors."""

import pytest
import torch

import spmm
from spmm import ops

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not spmm._C.cuda_built, reason="spmm was built without CUDA kernels"),
]

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def random_24_mask(m, k, generator=None, fill=2):
    """A keep-mask with `fill` (0..2) random kept elements in every group of 4."""
    scores = torch.rand(m, k // 4, 4, generator=generator)
    keep = torch.zeros_like(scores, dtype=torch.bool)
    if fill:
        keep.scatter_(-1, scores.topk(fill, dim=-1).indices, True)
    return keep.reshape(m, k)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", [(1, 4), (7, 12), (64, 128), (129, 72), (4096, 4096)])
@pytest.mark.parametrize("with_mask", [True, False])
def test_matches_cpu_packer_bit_for_bit(dtype, shape, with_mask):
    g = torch.Generator().manual_seed(hash((shape, str(dtype))) % 2**31)
    m, k = shape
    w = torch.randn(m, k, generator=g)
    w[torch.rand(m, k, generator=g) < 0.2] = 0.0  # zeros and -0.0 that the mask keeps are stored as +0.0
    w[torch.rand(m, k, generator=g) < 0.1] = -0.0
    w = w.to(dtype)
    mask = random_24_mask(m, k, g, fill=int(torch.randint(0, 3, (1,), generator=g)))
    if not with_mask:
        w = torch.where(mask, w, torch.zeros_like(w))
    args = (w, mask if with_mask else None)
    v_cpu, m_cpu = ops.sparse24_compress(*args)
    v_gpu, m_gpu = ops.sparse24_compress(*(a.cuda() if a is not None else None for a in args))
    assert v_gpu.is_cuda and m_gpu.is_cuda
    assert torch.equal(m_gpu.cpu(), m_cpu)
    assert torch.equal(v_gpu.cpu().view(torch.uint8), v_cpu.view(torch.uint8))  # bit-exact, -0.0 included


def test_non_contiguous_inputs_and_negative_zero():
    w = torch.randn(64, 32, device="cuda").half()
    w[0, :4] = torch.tensor([-0.0, 1.0, -0.0, 2.0])
    strided = w.t().contiguous().t()  # same values, column-major storage
    assert not strided.is_contiguous()
    mask = random_24_mask(64, 32).cuda()
    ref = ops.sparse24_compress(w.cpu(), mask.cpu())
    got = ops.sparse24_compress(strided, mask.t().contiguous().t())
    assert torch.equal(got[1].cpu(), ref[1]) and torch.equal(got[0].cpu(), ref[0])
    # Without a mask -0.0 is not kept: row 0 group 0 keeps columns 1 and 3.
    pruned = torch.where(mask, w, torch.zeros_like(w))
    pruned[0, :4] = torch.tensor([-0.0, 1.0, -0.0, 2.0], device="cuda", dtype=torch.half)
    _, meta = ops.sparse24_compress(pruned)
    assert meta[0, 0].item() & 0xF == (1 | 3 << 2)


def test_empty_shapes():
    for shape in [(0, 8), (5, 0)]:
        v, m = ops.sparse24_compress(torch.zeros(shape, device="cuda", dtype=torch.half))
        assert v.shape == (shape[0], shape[1] // 2) and m.shape == (shape[0], (shape[1] + 7) // 8)


@pytest.mark.parametrize("dtype", DTYPES)
def test_rejects_non_24_mask_naming_the_place(dtype):
    w = torch.randn(16, 64, device="cuda").to(dtype)
    mask = random_24_mask(16, 64).cuda()
    mask[5, 40:43] = True  # three kept in the group at columns 40..43
    with pytest.raises(ValueError, match=r"`mask` keeps more than 2 .* row 5, columns 40\.\.43"):
        ops.sparse24_compress(w, mask)
    with pytest.raises(ValueError, match=r"`dense` keeps more than 2 .* row 0, columns 0\.\.3"):
        ops.sparse24_compress(w)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_rejects_non_finite(bad):
    w = torch.zeros(8, 16, device="cuda", dtype=torch.half)
    w[3, 9] = bad
    with pytest.raises(ValueError, match=r"`dense` has a NaN or infinite value at row 3, column 9"):
        ops.sparse24_compress(w)


def test_rejects_mask_on_other_device():
    with pytest.raises(ValueError, match="`mask` is on cpu"):
        ops.sparse24_compress(torch.zeros(4, 8, device="cuda"), torch.zeros(4, 8, dtype=torch.bool))


def test_launches_on_the_current_stream():
    """The packer launches on the current stream (not the default one)."""
    s = torch.cuda.Stream()
    w = torch.randn(256, 256, device="cuda").half()
    mask = random_24_mask(256, 256).cuda()
    with torch.cuda.stream(s):
        v, m = ops.sparse24_compress(w, mask)
    s.synchronize()
    assert torch.equal(m.cpu(), ops.sparse24_compress(w.cpu(), mask.cpu())[1])
