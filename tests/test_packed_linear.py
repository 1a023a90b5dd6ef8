"""oneDNN-packed linear layers: same outputs as nn.Linear, switchable back for reference runs."""

import pytest
import torch

from personalign.runtime.llm.packed_linear import (
    PackedLinear,
    pack_linears,
    packing_available,
    plain_linears,
)

pytestmark = pytest.mark.skipif(not packing_available(), reason="no oneDNN in this torch")


class Tiny(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.body = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(),
                                        torch.nn.Linear(64, 32, bias=False))
        self.head = torch.nn.Linear(32, 4096, bias=False)  # most of the weights: not packed

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.parametrize("rows", [1, 4, 37])
def test_packed_model_matches_plain(rows):
    torch.manual_seed(0)
    model = Tiny().eval()
    x = torch.randn(2, rows, 32)
    with torch.inference_mode():
        want = model(x)
        assert pack_linears(model) == 2
        assert isinstance(model.body[0], PackedLinear) and type(model.head) is torch.nn.Linear
        got = model(x)
        with plain_linears(model):
            again = model(x)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    assert torch.equal(again, want)  # the plain path is the original computation
    assert all(m.enabled for m in model.modules() if isinstance(m, PackedLinear))


def test_gradients_use_the_plain_weight():
    """Training through a packed model gives every parameter the gradient of the same model
    unpacked (a dense reference: a deep copy taken before packing)."""
    import copy

    torch.manual_seed(0)
    model = Tiny()
    reference = copy.deepcopy(model)
    assert pack_linears(model) == 2
    x = torch.randn(3, 32)
    model(x).square().mean().backward()
    reference(x).square().mean().backward()
    got, want = dict(model.named_parameters()), dict(reference.named_parameters())
    assert sorted(got) == sorted(want)  # the packed layers keep the original parameters
    for name, param in want.items():
        assert param.grad is not None and param.grad.abs().sum() > 0, name
        torch.testing.assert_close(got[name].grad, param.grad, rtol=1e-5, atol=1e-7,
                                   msg=lambda m, name=name: f"{name}: {m}")


def test_a_cpu_that_refuses_to_pack_leaves_the_model_plain(monkeypatch):
    """oneDNN raises on bfloat16 packing on a CPU without AVX-512 (an AVX2 EPYC): the model
    then keeps plain layers and still runs, instead of failing at load."""
    import personalign.runtime.llm.packed_linear as packed_linear

    def refuse(weight, batch):
        raise RuntimeError("mkldnn_reorder_linear_weight: bf16 path needs the cpu support ...")

    monkeypatch.setattr(packed_linear.torch.ops.mkldnn, "_reorder_linear_weight", refuse)
    model = Tiny().to(torch.bfloat16).eval()
    assert pack_linears(model) == 0
    assert not any(isinstance(m, PackedLinear) for m in model.modules())
    with torch.inference_mode():
        assert model(torch.randn(2, 32, dtype=torch.bfloat16)).shape == (2, 4096)
