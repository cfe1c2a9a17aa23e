"""Small Hugging Face causal LMs built from configs (random weights, CPU), a word-level tokenizer made locally, and
the dense reference of a sparsified model: what the transformers tests need without a network."""

from __future__ import annotations

import copy
import random
from pathlib import Path

import pytest
import torch

import spmm

transformers = pytest.importorskip("transformers")

VOCAB = 96
WORDS = ("the of and to in is was for on that with as by at from his it an were are which be this has also had not "
         "but their first one its new after who they have her she two been other when there all during into school "
         "time may years more most only over city some world would where later up such used many can state about "
         "national out known university united then made").split()
SPECIAL = ["<unk>", "<s>", "</s>", "<pad>"]


def config(arch: str, **overrides):
    """A 2-layer model of `arch`: llama (grouped-query attention), qwen2 (biased q/k/v; a sliding-window layer after
    a full one, so the layers get different attention masks; eager attention, so the masks are real tensors) or
    opt (biases everywhere, an input and an output projection around the decoder)."""
    common = dict(vocab_size=VOCAB, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  max_position_embeddings=128, bos_token_id=1, eos_token_id=2, pad_token_id=3)
    if arch == "llama":
        cls, own = transformers.LlamaConfig, dict(intermediate_size=128, num_key_value_heads=2)
    elif arch == "qwen2":
        cls, own = transformers.Qwen2Config, dict(intermediate_size=128, num_key_value_heads=2, use_sliding_window=True,
                                                  sliding_window=4, max_window_layers=1, attn_implementation="eager")
    elif arch == "opt":
        cls, own = transformers.OPTConfig, dict(ffn_dim=128, word_embed_proj_dim=32)
    else:
        raise ValueError(arch)
    return cls(**{**common, **own, **overrides})


def model(arch: str, seed: int = 0, **overrides):
    torch.manual_seed(seed)
    cfg = config(arch, **overrides)
    return transformers.AutoModelForCausalLM.from_config(cfg).eval()


def decoder_linears(m) -> int:
    """How many nn.Linear the decoder has besides the output head."""
    head = m.get_output_embeddings()
    return sum(isinstance(mod, torch.nn.Linear) and mod is not head for mod in m.modules())


def dense_reference(m):
    """A copy of `m` with every sparse layer replaced by an nn.Linear holding its dense masked weight."""
    ref = copy.deepcopy(m)
    for name, mod in list(ref.named_modules()):
        if isinstance(mod, spmm.nn.SparseLinear):
            parent, _, child = name.rpartition(".")
            setattr(ref.get_submodule(parent), child, mod.to_dense_linear())
    return ref


def prompts(seed: int = 0):
    """Two prompts of 7 and 5 tokens, left-padded into one batch, with their attention mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, VOCAB, (2, 7), generator=g)
    mask = torch.ones_like(ids)
    ids[1, :2], mask[1, :2] = 3, 0
    return ids, mask


def greedy(m, new_tokens: int = 8, **kwargs) -> torch.Tensor:
    ids, mask = prompts()
    return m.generate(ids, attention_mask=mask, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                      do_sample=False, **kwargs)  # min_new_tokens: no early end of sequence, all tokens compared


def calibration(count: int = 2, length: int = 16, seed: int = 1):
    """Model inputs as a tokenizer gives them (a mapping with input_ids and attention_mask), no padding."""
    g = torch.Generator().manual_seed(seed)
    return [{"input_ids": torch.randint(4, VOCAB, (2, length), generator=g),
             "attention_mask": torch.ones(2, length, dtype=torch.long)} for _ in range(count)]


def save_tokenizer(directory: Path) -> None:
    """A word-level tokenizer over WORDS (ids below VOCAB), saved the way transformers saves one."""
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {w: i for i, w in enumerate(SPECIAL + list(WORDS))}
    assert len(vocab) <= VOCAB
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", bos_token="<s>",
                                                eos_token="</s>", pad_token="<pad>")
    fast.save_pretrained(directory)


def text(words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words))
