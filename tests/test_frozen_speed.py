"""Speed options of the frozen networks keep their function: LPIPS with channels-last convolutions."""

from __future__ import annotations

import pytest
import torch
from loss_helpers import images

from pixelgen.encoders import build_encoder


@pytest.mark.parametrize("net", ["squeeze"])
def test_lpips_channels_last_gives_the_same_distances_and_gradients(net):
    torch.manual_seed(0)
    plain = build_encoder("lpips", "random", net=net)
    fast = build_encoder("lpips", "random", net=net, channels_last=True)
    fast.load_state_dict(plain.state_dict())
    convs = [m for m in fast.modules() if isinstance(m, torch.nn.Conv2d)]
    assert convs and all(
        c.weight.is_contiguous(memory_format=torch.channels_last) for c in convs if c.kernel_size != (1, 1)
    )
    target, _ = images(batch=3, size=64)
    pred = (target + 0.2 * torch.randn_like(target)).requires_grad_()
    expected = plain(pred, target)
    (grad_expected,) = torch.autograd.grad(expected.sum(), pred)
    got = fast(pred, target)
    (grad_got,) = torch.autograd.grad(got.sum(), pred)
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grad_got, grad_expected, rtol=1e-4, atol=1e-7)
    assert "channels_last=True" in repr(fast)


def test_lpips_channels_last_must_be_a_bool():
    with pytest.raises(TypeError, match="channels_last"):
        build_encoder("lpips", "random", net="squeeze", channels_last="yes")
