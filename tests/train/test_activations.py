"""The output-saving ReLU6: the same outputs and gradients as ``nn.ReLU6``, less kept for the backward pass."""

from __future__ import annotations

import copy

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from edgetl.train.activations import LeanReLU6, lean_relu6  # noqa: E402


def _block(inplace: bool) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=inplace),
        nn.Conv2d(8, 8, 3, padding=1, groups=8, bias=False), nn.BatchNorm2d(8), nn.ReLU6(inplace=inplace),
        nn.Conv2d(8, 4, 1),
    )


def _grads(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
    x = x.clone().requires_grad_()
    out = model(x)
    (out * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
    return out.detach(), [p.grad.clone() for p in model.parameters()], x.grad.clone()


@pytest.mark.parametrize("inplace", [True, False])
def test_outputs_and_gradients_are_bit_identical(inplace: bool) -> None:
    plain = _block(inplace).train()
    lean = copy.deepcopy(plain)
    assert lean_relu6(lean) == 2
    assert all(type(m) is not nn.ReLU6 for m in lean.modules())
    x = torch.randn(4, 3, 12, 12) * 4  # wide enough that both clamps act
    expected, lean_result = _grads(plain, x), _grads(lean, x)
    assert torch.equal(expected[0], lean_result[0])
    for a, b in zip(expected[1], lean_result[1]):
        assert torch.equal(a, b)
    assert torch.equal(expected[2], lean_result[2])


def test_the_bounds_themselves_pass_no_gradient_as_in_pytorch() -> None:
    # hardtanh's gradient is 0 at x <= 0 and x >= 6; from the output the same test gives the same mask.
    x = torch.tensor([-1.0, 0.0, 1e-7, 3.0, 6.0 - 1e-6, 6.0, 7.0])
    for module in (nn.ReLU6(), LeanReLU6()):
        a = (x * 1.0).requires_grad_()
        y = module(a * 1.0)
        y.backward(torch.ones_like(y))
        assert a.grad.tolist() == [0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0]


def _saved_bytes(model: nn.Module, x: torch.Tensor) -> int:
    params = {p.untyped_storage().data_ptr() for p in model.parameters()}
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        if storage.data_ptr() not in params:
            saved[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        kept = model(x)
    del kept
    return sum(saved.values())


def test_in_place_form_keeps_no_copy_of_its_input() -> None:
    plain = _block(True).train()
    lean = copy.deepcopy(plain)
    lean_relu6(lean)
    x = torch.randn(2, 3, 16, 16, requires_grad=True)
    activation = 2 * 8 * 16 * 16 * 4  # one activation tensor's bytes
    assert _saved_bytes(plain, x) - _saved_bytes(lean, x) == 2 * activation  # one clone per ReLU6


def test_plain_op_outside_autograd_and_on_leaves() -> None:
    with torch.no_grad():
        assert LeanReLU6(inplace=True)(torch.tensor([-1.0, 7.0])).tolist() == [0.0, 6.0]
    leaf = torch.tensor([-1.0, 2.0, 9.0], requires_grad=True)
    y = LeanReLU6()(leaf)
    y.sum().backward()
    assert y.tolist() == [0.0, 2.0, 6.0] and leaf.grad.tolist() == [0.0, 1.0, 0.0]
    for module in (nn.ReLU6(inplace=True), LeanReLU6(inplace=True)):  # in place on a leaf: PyTorch's own error
        with pytest.raises(RuntimeError, match="leaf Variable"):
            module(torch.zeros(2, requires_grad=True))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit.trace's deprecation notice
def test_tracing_sees_the_plain_op_and_checkpoints_do_not_change() -> None:
    plain = _block(True).eval()
    lean = copy.deepcopy(plain)
    lean_relu6(lean)
    assert plain.state_dict().keys() == lean.state_dict().keys()
    traced = torch.jit.trace(lean, torch.randn(1, 3, 8, 8))
    assert "hardtanh" in str(traced.inlined_graph)
    assert "OutputSaving" not in str(traced.inlined_graph)


def test_the_training_core_swaps_them_in_for_every_task() -> None:
    from edgetl.train.engine import TrainingRun

    run = object.__new__(TrainingRun)  # only the placement settings: no config, data or device probing
    run.device, run.channels_last = torch.device("cpu"), True
    model = run.place_model(_block(True))
    assert sum(isinstance(m, LeanReLU6) for m in model.modules()) == 2
    assert model[0].weight.is_contiguous(memory_format=torch.channels_last)
