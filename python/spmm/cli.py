"""python -m spmm: prune a Hugging Face causal LM into a sparse one, and describe a saved one.

  python -m spmm prune MODEL_DIR OUT_DIR --format 2:4|unstructured:0.8|spense:0.25
                       [--pruner magnitude|wanda|sparsegpt] [--calibration TEXT_FILE] [--tokens N] [--seqlen L]
  python -m spmm info OUT_DIR

prune loads MODEL_DIR (a directory written by transformers' save_pretrained; nothing is downloaded), swaps every
linear layer of the decoder (not the output head) for the sparse format, writes OUT_DIR with spmm.save_pretrained
(plus MODEL_DIR's tokenizer) and prints a table: per layer the format, the bytes of the dense layer and of the
sparse one, and the relative output error on the calibration data. --calibration TEXT_FILE is tokenized with
MODEL_DIR's own tokenizer (a model directory without one can only be pruned by magnitude, without calibration);
its first --tokens tokens, cut into sequences of --seqlen, are the calibration data. wanda and sparsegpt need it;
with magnitude it only measures the output errors. info prints the same table from OUT_DIR's file headers.
spmm.from_pretrained(OUT_DIR) loads the result.

Exit status: 0 done; 2 a bad command line or an input that cannot be used (one line on stderr says which and why);
1 anything unexpected (a traceback).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional

from . import pruning
from .layer_summary import saved_summary, summary
from .nn import SparseLinear
from .pretrained import save_pretrained
from .sparse_api import Sparse24Config, SpenseConfig, TiledCSLConfig, sparsify

FORMATS = "2:4, unstructured:SPARSITY (e.g. unstructured:0.8) or spense:DENSE_FRACTION (e.g. spense:0.25)"


TOKENS = 2048  # default --tokens
SKIPPED = "spmm.sparsify: skipping "  # how sparsify's warning about a layer the format cannot take begins


class InputError(Exception):
    """An input the command cannot use; main() prints it as one line and exits with status 2."""


@dataclass(frozen=True)
class Format:
    """A parsed --format: its text, and the sparsify config it makes for a pruner."""

    text: str
    make: Callable[[str], object]


def parse_format(text: str) -> Format:
    kind, _, value = text.partition(":")
    if text == "2:4":
        return Format(text, lambda pruner: Sparse24Config(pruner=pruner))
    if kind in ("unstructured", "spense") and value:
        try:
            number = float(value)
        except ValueError:
            number = math.nan
        if not 0.0 <= number <= 1.0:
            what = "sparsity" if kind == "unstructured" else "dense fraction"
            raise argparse.ArgumentTypeError(f"{text!r}: the {what} must be a number in [0, 1], got {value!r}")
        if kind == "unstructured":
            return Format(text, lambda pruner: TiledCSLConfig(sparsity=number, pruner=pruner))
        return Format(text, lambda pruner: SpenseConfig(dense_fraction=number, pruner=pruner))
    raise argparse.ArgumentTypeError(f"unknown format {text!r}; use {FORMATS}")


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text!r}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m spmm", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True, metavar="{prune,info}")
    prune = commands.add_parser("prune", help="sparsify a model directory into OUT_DIR",
                                description="Sparsify MODEL_DIR into OUT_DIR (see python -m spmm --help).")
    prune.add_argument("model_dir", metavar="MODEL_DIR", help="a transformers model directory (config.json, weights)")
    prune.add_argument("out_dir", metavar="OUT_DIR", help="where the sparse model goes (created if needed)")
    prune.add_argument("--format", required=True, type=parse_format, metavar="FORMAT", help=FORMATS)
    prune.add_argument("--pruner", default="magnitude", choices=pruning.available_pruners(),
                       help="how weights are chosen (default: magnitude)")
    prune.add_argument("--calibration", metavar="TEXT_FILE", help="text to calibrate on (needed by wanda, sparsegpt)")
    prune.add_argument("--tokens", type=_positive, metavar="N", help=f"calibration tokens to use (default {TOKENS})")
    prune.add_argument("--seqlen", type=_positive, metavar="L",
                       help="tokens per calibration sequence (default: min(512, the model's context))")
    prune.add_argument("--max-shard-size", default="5GB", metavar="SIZE",
                       help="largest weight file, e.g. 5GB or 500MB (default 5GB)")
    info = commands.add_parser("info", help="print the layer table of a directory written by prune",
                               description="Print the layer table of a model written by python -m spmm prune or "
                                           "spmm.save_pretrained.")
    info.add_argument("out_dir", metavar="OUT_DIR")
    return parser


def _transformers():
    try:
        import transformers
    except ImportError:
        raise InputError("the transformers package is needed: pip install transformers") from None
    return transformers


def _check_model_dir(model_dir: Path) -> None:
    if not model_dir.is_dir():
        raise InputError(f"MODEL_DIR: {os.fspath(model_dir)!r} is not a directory")
    if not (model_dir / "config.json").is_file():
        raise InputError(f"MODEL_DIR: {os.fspath(model_dir)!r} is not a model directory (no config.json)")


def _load_tokenizer(model_dir: Path):
    try:
        return _transformers().AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
    except Exception as why:  # transformers raises OSError, ValueError, TypeError... for a missing tokenizer
        raise InputError(f"MODEL_DIR: {os.fspath(model_dir)!r} has no usable tokenizer to read the calibration "
                         f"text with ({_first_line(why)})") from None


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def calibration_batches(tokenizer, path: Path, tokens: int, seqlen: int) -> List[dict]:
    """The first `tokens` tokens of the text at `path`, in sequences of `seqlen` (the last may be shorter), each a
    batch of one: no padding, so every token counts as calibration data."""
    import torch

    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as why:
        raise InputError(f"--calibration: cannot read {os.fspath(path)!r} as UTF-8 text ({why})") from None
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) < tokens:
        raise InputError(f"--calibration: {os.fspath(path)!r} holds {len(ids)} tokens (by MODEL_DIR's tokenizer), "
                         f"fewer than --tokens {tokens}: give a longer text or a smaller --tokens")
    ids = torch.tensor(ids[:tokens], dtype=torch.long)
    return [{"input_ids": chunk[None]} for chunk in ids.split(seqlen)]


def prune_command(args: argparse.Namespace) -> int:
    model_dir, out_dir = Path(args.model_dir), Path(args.out_dir)
    config = args.format.make(args.pruner)
    if args.calibration is None and pruning.pruner_needs(args.pruner) is not None:
        raise InputError(f"--pruner {args.pruner} needs calibration data: pass --calibration TEXT_FILE")
    if args.calibration is None and (args.tokens or args.seqlen):
        raise InputError("--tokens and --seqlen choose calibration data: pass --calibration TEXT_FILE")
    tokens = args.tokens or TOKENS
    _check_model_dir(model_dir)
    if out_dir.resolve() == model_dir.resolve():
        raise InputError("OUT_DIR must differ from MODEL_DIR (the dense model would be overwritten)")
    transformers = _transformers()
    transformers.utils.logging.disable_progress_bar()  # spmm's own bar (per layer) is the one that matters here
    try:
        model_config = transformers.AutoConfig.from_pretrained(model_dir, local_files_only=True)
    except Exception as why:
        raise InputError(f"MODEL_DIR: {os.fspath(model_dir)!r}: transformers cannot read its config "
                         f"({_first_line(why)})") from None

    tokenizer, calibration = None, None
    if args.calibration is not None:
        text = Path(args.calibration)
        if not text.is_file():
            raise InputError(f"--calibration: {os.fspath(text)!r} is not a file")
        tokenizer = _load_tokenizer(model_dir)
        context = getattr(model_config, "max_position_embeddings", None) or 512
        seqlen = args.seqlen or min(512, context, tokens)
        if seqlen > context:
            raise InputError(f"--seqlen {seqlen} exceeds the model's context of {context} tokens")
        calibration = calibration_batches(tokenizer, text, tokens, seqlen)

    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(model_dir, dtype="auto", local_files_only=True)
    except Exception as why:
        raise InputError(f"MODEL_DIR: {os.fspath(model_dir)!r}: transformers cannot load it as a causal LM "
                         f"({_first_line(why)})") from None
    head = model.get_output_embeddings()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        sparsify(model, config, filter_fn=lambda name, module: module is not head, calibration=calibration)
    skipped = [str(w.message) for w in caught if str(w.message).startswith(SKIPPED)]
    if not any(isinstance(m, SparseLinear) for m in model.modules()):
        if skipped:
            more = f"; and {len(skipped) - 1} more" if len(skipped) > 1 else ""
            reason = f"skipped {skipped[0][len(SKIPPED):]}{more}"
        else:
            reason = "it has no linear layer besides its output head"
        raise InputError(f"no linear layer of MODEL_DIR can take --format {args.format.text} ({reason})")
    for message in skipped:
        print(message, file=sys.stderr)

    try:
        save_pretrained(model, out_dir, max_shard_size=args.max_shard_size)
    except ValueError as why:  # e.g. a --max-shard-size huggingface_hub cannot parse
        raise InputError(f"saving to {os.fspath(out_dir)!r}: {why}") from None
    if tokenizer is None:
        try:
            tokenizer = transformers.AutoTokenizer.from_pretrained(model_dir, local_files_only=True)
        except Exception:
            print(f"note: {os.fspath(model_dir)!r} has no tokenizer, so {os.fspath(out_dir)!r} has none either",
                  file=sys.stderr)
    if tokenizer is not None:
        tokenizer.save_pretrained(out_dir)
    table = summary(model)
    print(f"saved {os.fspath(out_dir)!r}: {table.sparse_bytes / 2**20:.1f} MiB of tensors, from "
          f"{table.dense_bytes / 2**20:.1f} MiB dense", file=sys.stderr)
    print(table)
    return 0


def info_command(args: argparse.Namespace) -> int:
    try:
        table = saved_summary(args.out_dir)
    except ValueError as why:
        raise InputError(str(why).replace("directory:", "OUT_DIR:", 1)) from None
    print(table)
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return prune_command(args) if args.command == "prune" else info_command(args)
    except InputError as why:
        print(f"python -m spmm {args.command}: error: {why}", file=sys.stderr)
        return 2
