"""Dispatch-mode probes for tests: the largest tensor an operator returns, for tests that bound a
loss's memory (the fused linear loss never forming its ``(N, C)`` logits), and the names of the
operators called. A plain module that test modules import, as ``backend_suite``."""

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class LargestTensor(TorchDispatchMode):
    """The largest number of elements of any storage an operator returns (views, as the
    zero-stride ``(N, C)`` view that the argument checks use, own no memory of their own)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.untyped_storage().nbytes() // t.element_size())
        return out


class OperatorNames(TorchDispatchMode):
    """The names (``func.overloadpacket.__name__``) of the operators called under it."""

    def __init__(self):
        super().__init__()
        self.names = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.names.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))
