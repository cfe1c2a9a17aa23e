"""What every packed weight format shares."""

from __future__ import annotations

from typing import Dict

import torch
from torch import Tensor


class PackedWeight:
    """A packed weight is its tensors (what save/load stores and what a kernel reads); the first one holds the
    weight's values, so it gives the format's dtype and device."""

    def tensors(self) -> Dict[str, Tensor]:
        raise NotImplementedError

    def validate(self) -> "PackedWeight":
        """Check the layout's contents, which the constructor (shapes, dtypes, devices only) does not read, and
        return self; a ValueError names the first rule broken. Layers run it when they are built from a format or
        load a state dict; the CPU ops check what they read on every call, while the CUDA kernels trust the layout
        (the library's packers make valid ones)."""
        raise NotImplementedError

    def _holds_data(self) -> bool:
        """False on the meta device (shapes only: nothing to validate)."""
        return self.device.type != "meta"

    @property
    def nbytes(self) -> int:
        """Bytes a kernel reads for the weight: every stored tensor."""
        return sum(t.numel() * t.element_size() for t in self.tensors().values())

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.tensors().values())).dtype

    @property
    def device(self) -> torch.device:
        return next(iter(self.tensors().values())).device
