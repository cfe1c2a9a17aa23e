"""The end-to-end decode suite on CPU (tiny preset): it runs and writes sane records, and swapping the decoder's
linears for sparse layers computes what the dense model with the masked weights computes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `bench` is a folder of the repository, not an installed package

from bench.decoder import _rotate_half, linears  # noqa: E402
from bench.e2e import FIELDS, build  # noqa: E402


@pytest.mark.slow
def test_cpu_suite(tmp_path):
    out = tmp_path / "e2e"
    cmd = [sys.executable, "-m", "bench.e2e", "--device", "cpu", "--batch", "1", "2", "--steps", "3",
           "--warmup", "1", "--out", str(out)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    records = json.loads((out / "e2e.json").read_text())
    assert (out / "e2e.csv").read_text().count("\n") == len(records) + 1
    assert (out / "e2e.png").stat().st_size > 1000
    variants = ("dense", "2:4", "spense25", "tcsl80")
    assert {(r["variant"], r["batch"]) for r in records} == {(v, b) for v in variants for b in (1, 2)}
    for r in records:
        assert set(FIELDS) <= r.keys()
        assert r["error"] is None, r
        assert r["preset"] == "tiny" and r["graph"] is False and r["cuda"] == torch.version.cuda
        assert r["tokens_per_s"] > 0 and r["step_ms"] > 0 and r["linear_ms"] > 0 and r["speedup"] > 0
        assert abs(r["tokens_per_s"] - r["batch"] / r["step_ms"] * 1e3) < 1e-6 * r["tokens_per_s"]
        assert 0 < r["linear_share"] and r["linear_gb"] > 0
        assert r["linear_resident_gb"] >= r["linear_gb"]  # resident: the stored format and the rest (CPU: biases)
        if r["variant"] == "dense":
            assert r["speedup"] == 1.0
    assert "tokens/s" in proc.stdout


def _masked_24(w: torch.Tensor) -> torch.Tensor:
    """Magnitude 2:4, computed here independently: keep the 2 largest |w| of every 4 along K."""
    groups = w.reshape(w.shape[0], -1, 4)
    keep = torch.zeros_like(groups, dtype=torch.bool).scatter_(-1, groups.abs().topk(2, dim=-1).indices, True)
    return (groups * keep).reshape(w.shape)


def _decode(model, tokens, steps):
    model.setup_cache(tokens.shape[0], 16)
    return torch.stack([model.decode_step(tokens, torch.tensor([p])) for p in range(steps)])


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["2:4", "spense25", "tcsl80"])
@torch.no_grad()
def test_sparse_model_equals_dense_masked(variant):
    sparse = build("tiny", variant, "cpu", torch.float32, seed=3)
    ref = build("tiny", "dense", "cpu", torch.float32, seed=3)  # same seed: the same dense weights
    swapped = 0
    for (name, s), (_, d) in zip(linears(sparse), linears(ref)):
        if name == "lm_head":
            assert isinstance(s, torch.nn.Linear)  # stays dense
            continue
        masked = s.to_dense_weight()
        if variant == "2:4":
            assert torch.equal(masked, _masked_24(d.weight))
        elif variant == "spense25":  # a quarter of the rows as they were, the rest 2:4
            kept = (masked == d.weight).all(dim=1)
            assert kept.float().mean().item() == pytest.approx(0.25, abs=0.02)
            assert torch.equal(masked[~kept], _masked_24(d.weight)[~kept])
        else:
            assert (masked == 0).float().mean().item() == pytest.approx(0.8, abs=1e-3)
            assert torch.equal(masked, torch.where(masked != 0, d.weight, 0))
        d.weight.copy_(masked)
        swapped += 1
    assert swapped == 4 * 2  # qkv, o, gate_up, down in each of 2 blocks
    tokens = torch.tensor([[5], [917]])
    torch.testing.assert_close(_decode(sparse, tokens, 4), _decode(ref, tokens, 4))


@torch.no_grad()
def test_cache_beyond_position_is_ignored():
    """The mask hides the unwritten cache: garbage there does not change the logits (graph-safe static cache)."""
    model = build("tiny", "dense", "cpu", torch.float32, seed=0)
    tokens = torch.tensor([[1], [2]])
    clean = _decode(model, tokens, 3)
    model.setup_cache(2, 16)
    for layer in model.layers:
        layer.attn.k_cache.normal_()
        layer.attn.v_cache.normal_()
    noisy = torch.stack([model.decode_step(tokens, torch.tensor([p])) for p in range(3)])
    torch.testing.assert_close(noisy, clean)


def _full_forward(model, tokens):
    """The whole sequence at once with causal attention, no cache: what T decode steps must reproduce."""
    c, (b, t) = model.c, tokens.shape
    model.setup_cache(b, t)  # only for the rotary tables
    cos, sin = model.cos[:t], model.sin[:t]
    x = model.embed(tokens)
    for layer in model.layers:
        a, h = layer.attn, layer.attn_norm(x)
        q, k, v = a.qkv(h).split([c.heads * c.head_dim, c.n_kv * c.head_dim, c.n_kv * c.head_dim], dim=-1)
        q = q.reshape(b, t, c.heads, c.head_dim).transpose(1, 2)
        k = k.reshape(b, t, c.n_kv, c.head_dim).transpose(1, 2).repeat_interleave(c.heads // c.n_kv, dim=1)
        v = v.reshape(b, t, c.n_kv, c.head_dim).transpose(1, 2).repeat_interleave(c.heads // c.n_kv, dim=1)
        q, k = q * cos + _rotate_half(q) * sin, k * cos + _rotate_half(k) * sin
        o = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + a.o(o.transpose(1, 2).reshape(b, t, -1))
        x = x + layer.mlp(layer.mlp_norm(x))
    return model.lm_head(model.norm(x))


@torch.no_grad()
def test_decode_steps_equal_full_forward():
    """KV cache, rotary position and mask plumbing: step-by-step decoding = one causal pass over the sequence."""
    model = build("tiny", "dense", "cpu", torch.float32, seed=1)
    tokens = torch.randint(0, model.c.vocab, (2, 5), generator=torch.Generator().manual_seed(0))
    full = _full_forward(model, tokens)
    model.setup_cache(2, 8)
    steps = [model.decode_step(tokens[:, p:p + 1], torch.tensor([p])) for p in range(5)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full)


@torch.no_grad()
@pytest.mark.slow
def test_compiled_decode_step_equals_eager():
    """bench.e2e --compile: the sparse model's decode step under torch.compile(fullgraph=True) computes what the
    eager step does (the spmm ops trace through their fake implementations)."""
    model = build("tiny", "2:4", "cpu", torch.float32, seed=4)
    tokens = torch.tensor([[3], [700]])
    model.setup_cache(2, 8)
    compiled = torch.compile(model.decode_step, fullgraph=True, dynamic=False)
    got = [compiled(tokens, torch.tensor([p])) for p in range(3)]
    want = _decode(model, tokens, 3)
    torch.testing.assert_close(torch.stack(got), want, rtol=1e-4, atol=1e-4)
