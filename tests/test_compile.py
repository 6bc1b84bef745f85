"""torch.compile readiness of the backbone (no graph breaks) and the pinned-SDPA attention backends.

Graph breaks are caught here on CPU, long before a GPU run would show them as lost speed.
"""

from __future__ import annotations

import pytest
import torch

from pixelgen import build_model
from pixelgen.nn import ATTENTION_BACKENDS, attention

TINY = dict(
    input_size=32,
    patch_size=8,
    hidden_size=64,
    depth=3,
    num_heads=4,
    num_classes=10,
    bottleneck_dim=16,
    in_context_len=4,
    in_context_start=1,
)


def _tiny_model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("jit", **TINY)
    for block in model.blocks:  # the zero-initialised gates would make every block a no-op
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.05)
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.05)
    return model


def _inputs(batch: int = 2):
    g = torch.Generator().manual_seed(1)
    return torch.randn(batch, 3, 32, 32, generator=g), torch.rand(batch, generator=g), torch.tensor([1, 10][:batch])


@pytest.mark.parametrize("backend", ["auto", "sdpa_cudnn"])
def test_backbone_forward_has_no_graph_breaks_with_input_checks_on(backend):
    model = _tiny_model()
    model.attention_backend = backend
    assert model.check_inputs  # the value checks (a host sync) must not split the graph
    torch._dynamo.reset()
    explained = torch._dynamo.explain(model)(*_inputs(), return_layer=2)
    reasons = [str(b.reason).splitlines()[0] for b in explained.break_reasons]
    assert explained.graph_break_count == 0, reasons
    assert explained.graph_count == 1


def test_full_graph_compiled_training_step_matches_eager():
    model = _tiny_model().train()
    x, t, y = _inputs()
    eager_out, eager_feat = model(x, t, y, return_layer=1)
    (eager_out.square().mean() + eager_feat.square().mean()).backward()
    eager_grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    model.zero_grad(set_to_none=True)

    torch._dynamo.reset()
    compiled = torch.compile(model, fullgraph=True, backend="aot_eager")  # traces forward and backward
    out, feat = compiled(x, t, y, return_layer=1)
    (out.square().mean() + feat.square().mean()).backward()
    torch.testing.assert_close(out, eager_out)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, msg=name)


def test_value_checks_still_run_in_eager_mode():
    model = _tiny_model()
    x, t, y = _inputs()
    with pytest.raises(ValueError, match="t must lie in \\[0, 1\\]"):
        model(x, t + 2.0, y)
    with pytest.raises(ValueError, match="y must be class indices in \\[0, 10\\]"):
        model(x, t, torch.tensor([1, 11]))


@pytest.mark.parametrize("backend", ["sdpa_flash", "sdpa_efficient", "sdpa_cudnn"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_pinned_sdpa_backends_fall_back_and_agree_on_cpu(backend, dtype):
    assert backend in ATTENTION_BACKENDS
    g = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 4, 9, 72, generator=g).to(dtype) for _ in range(3))
    mask = torch.ones(2, 9, dtype=torch.bool)
    mask[0, 5:] = False
    for key_padding_mask in (None, mask):
        expected = attention(q, k, v, backend="sdpa", key_padding_mask=key_padding_mask)
        torch.testing.assert_close(attention(q, k, v, backend=backend, key_padding_mask=key_padding_mask), expected)


def test_backbone_with_a_pinned_backend_equals_default():
    model = _tiny_model().eval()
    x, t, y = _inputs()
    with torch.no_grad():
        expected = model(x, t, y)
        model.attention_backend = "sdpa_efficient"
        assert all(b.attn.attention_backend == "sdpa_efficient" for b in model.blocks)
        torch.testing.assert_close(model(x, t, y), expected)
