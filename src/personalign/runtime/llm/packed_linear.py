"""Linear layers whose weights are pre-packed for oneDNN (CPU inference only).

PyTorch's default CPU ``linear`` calls MKL's sgemm on the row-major weight; for the few rows
of a decode step (K samples: K rows) that streams the weights at a fraction of the memory
bandwidth. oneDNN's blocked weight layout, packed once at load time, is about 2x faster at 4
rows and 10-35% faster at 16 to 1024 rows on this machine (``benchmarks/engine_bench.py``
prints the side-by-side numbers). Outputs agree with ``F.linear`` to float rounding (about
1e-5 relative), so scoring gives the same choices; the benchmark checks it.
"""

from __future__ import annotations

import contextlib
import logging

import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

# Pack the output layer only when it is a modest share of the weights: a packed copy of a
# tied 262k-row layer (Gemma) would add ~0.7 GB, and scoring applies it to a few rows only.
MAX_HEAD_SHARE = 0.25


def packing_available() -> bool:
    return (torch.backends.mkldnn.is_available()
            and hasattr(torch.ops.mkldnn, "_reorder_linear_weight")
            and hasattr(torch.ops.mkldnn, "_linear_pointwise"))


class PackedLinear(torch.nn.Module):
    """Drop-in for an ``nn.Linear`` at inference. The original weight stays (model code reads
    ``.weight``, and :func:`plain_linears` switches back to it for reference runs)."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        self.in_features, self.out_features = linear.in_features, linear.out_features
        self.weight = linear.weight
        self.bias = linear.bias
        packed = torch.ops.mkldnn._reorder_linear_weight(linear.weight.detach(), 4)
        self.register_buffer("packed_weight", packed, persistent=False)
        self.enabled = True

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled or x.dtype != self.weight.dtype or torch.is_grad_enabled():
            return F.linear(x, self.weight, self.bias)
        bias = None if self.bias is None else self.bias.detach()
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, bias, "none", [], "")

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, packed"


def _agrees(linear: torch.nn.Linear) -> bool:
    """One packed layer against F.linear on random rows (guards odd builds, dtypes and CPUs:
    oneDNN refuses bfloat16 packing on a CPU without AVX-512 or AVX-NE-CONVERT)."""
    x = torch.randn(3, linear.in_features, dtype=linear.weight.dtype)
    with torch.no_grad():
        want = F.linear(x, linear.weight, linear.bias).float()
        try:
            got = PackedLinear(linear)(x).float()
        except RuntimeError as e:
            log.info("oneDNN cannot pack %s weights here: %s", linear.weight.dtype, e)
            return False
    tol = 1e-3 if linear.weight.dtype == torch.float32 else 5e-2
    return bool(torch.allclose(got, want, rtol=tol, atol=tol * float(want.abs().max())))


def pack_linears(model: torch.nn.Module) -> int:
    """Replace the model's CPU ``nn.Linear`` layers by :class:`PackedLinear`; returns how many.
    A no-op (0) where oneDNN packing is unavailable or disagrees with ``F.linear``."""
    if not packing_available():
        return 0
    total = sum(p.numel() for p in model.parameters())
    targets = []
    for module in model.modules():
        for child_name, child in module.named_children():
            if type(child) is not torch.nn.Linear or child.weight.device.type != "cpu":
                continue
            if child.weight.dtype not in (torch.float32, torch.bfloat16):
                continue
            if child.weight.numel() > MAX_HEAD_SHARE * total:
                continue
            targets.append((module, child_name, child))
    if not targets or not _agrees(targets[0][2]):
        log.info("oneDNN weight packing unavailable here; using plain linear layers")
        return 0
    for module, child_name, child in targets:
        setattr(module, child_name, PackedLinear(child))
    return len(targets)


@contextlib.contextmanager
def plain_linears(model: torch.nn.Module):
    """Run ``model`` with its packed layers switched back to ``F.linear`` (reference runs)."""
    packed = [m for m in model.modules() if isinstance(m, PackedLinear) and m.enabled]
    for m in packed:
        m.enabled = False
    try:
        yield model
    finally:
        for m in packed:
            m.enabled = True
