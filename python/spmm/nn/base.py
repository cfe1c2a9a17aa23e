"""What the sparse nn.Linear replacements share: features, bias, buffers from a format, dense views, loading."""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
from torch import Tensor, nn


def _refresh_after_load(module: "SparseLinear", _incompatible_keys) -> None:
    # A module-level function, so whole layers still pickle (torch.save(model)). torch runs it also after a load that
    # failed (the error is raised afterwards); the layouts are derived from a consistent format only.
    if not getattr(module, "_load_failed", False):
        module._refresh_kernel_layout()


class SparseLinear(nn.Module):
    """Base of the drop-in nn.Linear replacements. Subclasses set `format_cls`, build placeholders in __init__,
    and implement `weight_format`, `forward` and `kwargs_of`. Everything is a buffer (inference only), so
    .to()/.cuda()/.half() and state_dict work; bias stays under the key "bias" as in nn.Linear. A subclass whose
    GPU kernel wants its own copy of the weight builds it in `_refresh_kernel_layout` (non-persistent buffers),
    which runs whenever the format is set, the layer moves or changes dtype, or loads a state dict."""

    format_cls: Any = None
    resizable_buffers: tuple = ()  # buffers whose length follows the loaded state dict (nnz, dense/sparse split)

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.register_buffer("bias", torch.zeros(out_features, device=device, dtype=dtype) if bias else None)
        self.register_load_state_dict_post_hook(_refresh_after_load)

    # ---- formats in and out
    def _set_format(self, fmt) -> None:
        for name, tensor in fmt.tensors().items():
            self.register_buffer(name, tensor)
        self._refresh_kernel_layout()

    def _refresh_kernel_layout(self) -> None:
        """Rebuild the kernel layouts from the saved format (none by default)."""

    def _apply(self, fn, recurse=True):
        super()._apply(fn, recurse)
        self._refresh_kernel_layout()
        return self

    @classmethod
    def from_format(cls, fmt, bias: Optional[Tensor] = None) -> "SparseLinear":
        """A layer holding `fmt` (its tensors are used, not copied) and a copy of `bias`."""
        out_features, in_features = fmt.shape
        layer = cls(in_features, out_features, bias=bias is not None, device="meta", dtype=fmt.dtype,
                    **cls.kwargs_of(fmt))
        layer._set_format(fmt)
        if bias is not None:
            layer.bias = bias.detach().to(device=fmt.device, dtype=fmt.dtype, copy=True)
        return layer

    @classmethod
    def from_dense(cls, linear: nn.Linear, mask: Optional[Tensor] = None, **format_kwargs) -> "SparseLinear":
        """Pack `linear.weight` keeping `mask` (None: keep the nonzeros); format_kwargs go to format_cls.from_dense."""
        fmt = cls.format_cls.from_dense(linear.weight.detach(), mask=mask, **format_kwargs)
        return cls.from_format(fmt, linear.bias)

    @staticmethod
    def kwargs_of(fmt) -> Dict[str, Any]:
        """Constructor arguments (beyond features/bias) that shape a layer holding `fmt`."""
        return {}

    def format_kwargs(self) -> Dict[str, Any]:
        return self.kwargs_of(self.weight_format)

    @property
    def weight_format(self):
        raise NotImplementedError

    # ---- dense views for checks
    def to_dense_weight(self) -> Tensor:
        return self.weight_format.to_dense()

    def to_dense_linear(self) -> nn.Linear:
        weight = self.to_dense_weight()
        linear = nn.Linear(self.in_features, self.out_features, self.bias is not None,
                           device=weight.device, dtype=weight.dtype)
        with torch.no_grad():
            linear.weight.copy_(weight)
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    @property
    def nbytes(self) -> int:
        return self.weight_format.nbytes

    def format_repr(self) -> str:
        return f"format={self.format_cls.format_name}"

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{self.format_repr()}, nbytes={self.nbytes}")

    # ---- loading: packed sizes depend on the weight, so a placeholder takes the shapes it is given
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        for name in self.resizable_buffers:
            incoming, current = state_dict.get(prefix + name), getattr(self, name)
            if isinstance(incoming, Tensor) and incoming.shape != current.shape:
                self.register_buffer(name, torch.empty(incoming.shape, dtype=current.dtype, device=current.device))
        error_msgs = args[-1] if args else kwargs["error_msgs"]
        errors_before = len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._load_failed = len(error_msgs) > errors_before
