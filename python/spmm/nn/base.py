"""What the sparse nn.Linear replacements share: features, bias, buffers from a format, dense views, loading."""

from __future__ import annotations

from typing import Any, Dict, Mapping, Optional

import torch
from torch import Tensor, nn


def _refresh_after_load(module: "SparseLinear", _incompatible_keys) -> None:
    # A module-level function, so whole layers still pickle (torch.save(model)). torch runs it also after a load that
    # failed (the error is raised afterwards); the layouts are derived from a consistent format only.
    if not getattr(module, "_load_failed", False):
        module._refresh_kernel_layout()


class SparseLinear(nn.Module):
    """Base of the drop-in nn.Linear replacements. Subclasses set `format_cls`, build placeholders in __init__,
    and implement `_format_from`, `forward` and `kwargs_of`. The packed weight is made of buffers (frozen: no
    gradient, no optimizer step) and the bias is an nn.Parameter as in nn.Linear (key "bias"), so adapters and
    biases train on a sparse base; .to()/.cuda()/.half() and state_dict work. A subclass whose GPU kernel wants its
    own copy of the weight builds it in `_refresh_kernel_layout` (non-persistent buffers), which runs whenever the
    format is set, the layer moves or changes dtype, or loads a state dict. Every format a layer is built from or
    loads is validated first (format.validate())."""

    format_cls: Any = None
    resizable_buffers: tuple = ()  # buffers whose length follows the loaded state dict (nnz, dense/sparse split)
    # Relative output error ||y - y_dense|| / ||y_dense|| on the calibration data, set by spmm.sparsify when it ran
    # with calibration (None otherwise); spmm.summary shows it and spmm.save_pretrained keeps it.
    output_error: Optional[float] = None

    def __init__(self, in_features: int, out_features: int, bias: bool, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        if bias:
            self.bias = nn.Parameter(torch.zeros(out_features, device=device, dtype=dtype))
        else:
            self.register_parameter("bias", None)
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
        """A layer holding `fmt` (validated; its tensors are used, not copied) and a copy of `bias` as a Parameter
        (trainable as `bias` was)."""
        fmt.validate()
        out_features, in_features = fmt.shape
        layer = cls(in_features, out_features, bias=bias is not None, device="meta", dtype=fmt.dtype,
                    **cls.kwargs_of(fmt))
        layer._set_format(fmt)
        if bias is not None:
            layer.bias = nn.Parameter(bias.detach().to(device=fmt.device, dtype=fmt.dtype, copy=True),
                                      requires_grad=bias.requires_grad)
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
        """The packed weight, a format over the layer's buffers (not copied, not validated again)."""
        return self._format_from(self._buffers)

    def _format_from(self, tensors: Mapping[str, Tensor]):
        """This layer's format over the given tensors (the layer's buffers, or a state dict's tensors)."""
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
        """Bytes of the stored (saved) weight format."""
        return self.weight_format.nbytes

    @property
    def resident_bytes(self) -> int:
        """Bytes of everything the layer holds on its device: the format, every kernel layout, the bias."""
        held = [*self.parameters(recurse=False), *self.buffers(recurse=False)]
        return sum(t.numel() * t.element_size() for t in held)

    def format_repr(self) -> str:
        return f"format={self.format_cls.format_name}"

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"{self.format_repr()}, nbytes={self.nbytes}")

    # ---- loading: the incoming layout is validated before it is copied in; packed sizes depend on the weight, so
    # a placeholder takes the shapes it is given
    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        self._validate_incoming(state_dict, prefix)
        for name in self.resizable_buffers:
            incoming, current = state_dict.get(prefix + name), getattr(self, name)
            if isinstance(incoming, Tensor) and incoming.shape != current.shape:
                self.register_buffer(name, torch.empty(incoming.shape, dtype=current.dtype, device=current.device))
        error_msgs = args[-1] if args else kwargs["error_msgs"]
        errors_before = len(error_msgs)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self._load_failed = len(error_msgs) > errors_before

    def _validate_incoming(self, state_dict: Mapping[str, Tensor], prefix: str) -> None:
        names = list(self.weight_format.tensors())
        incoming = {name: state_dict[prefix + name] for name in names
                    if isinstance(state_dict.get(prefix + name), Tensor)}
        fixed_size_differs = any(incoming[name].shape != getattr(self, name).shape
                                 for name in incoming if name not in self.resizable_buffers)
        if not incoming or fixed_size_differs:  # nothing to check, or torch's own size-mismatch error follows
            return
        device = next(iter(incoming.values())).device  # a partial state dict is checked with the layer's other tensors
        tensors = {name: incoming[name] if name in incoming else getattr(self, name).to(device) for name in names}
        try:
            self._format_from(tensors).validate()
        except ValueError as e:
            raise ValueError(f"{prefix.rstrip('.') or type(self).__name__}: the state dict's packed weight is not "
                             f"valid: {e}") from None
