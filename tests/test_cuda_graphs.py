"""GraphedDenoiser: a pass-through off CUDA, and its record/replay bookkeeping (checked on CPU with a stand-in
for the CUDA graph, which only a GPU can record; benchmarks/gpu_suite.py compares real replays with eager calls)."""

from __future__ import annotations

import pytest
import torch

from pixelgen import build_model
from pixelgen.samplers import GraphedDenoiser, build_sampler, generate


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model(
        "jit",
        input_size=16,
        patch_size=8,
        hidden_size=32,
        depth=2,
        num_heads=2,
        num_classes=10,
        bottleneck_dim=8,
        in_context_len=2,
        in_context_start=1,
    ).eval()
    torch.nn.init.normal_(model.final_layer.linear.weight, std=0.05)
    for block in model.blocks:
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.05)
    return model


class StandInGraph(GraphedDenoiser):
    """Records on CPU: 'replay' recomputes the recorded call from the static buffers into the static output."""

    graph_devices = ("cpu",)

    def _record(self, inputs, autocast):
        static_inputs = tuple(v.clone() for v in inputs)
        static_out = self.denoiser(*static_inputs).clone()
        self.records = getattr(self, "records", 0) + 1

        def replay():
            static_out.copy_(self.denoiser(*static_inputs))

        return replay, static_inputs, static_out


def test_off_cuda_it_is_a_plain_call_and_generate_is_unchanged():
    model = _model()
    graphed = GraphedDenoiser(model)
    x, t, y = torch.randn(2, 3, 16, 16), torch.rand(2), torch.tensor([1, 2])
    with torch.inference_mode():
        torch.testing.assert_close(graphed(x, t, y), model(x, t, y), rtol=0, atol=0)
    assert graphed.num_graphs == 0 and graphed.replays == 0
    sampler = build_sampler(
        "heun", num_steps=4, timeshift=2.0, guidance=2.0, guidance_interval_min=0.1, guidance_interval_max=0.9
    )
    labels = [1, 2, 3]
    plain = generate(model, labels, sampler=sampler, batch_size=2, progress=False)
    assert torch.equal(generate(model, labels, sampler=sampler, batch_size=2, progress=False, cuda_graphs=True), plain)


def test_replays_give_the_eager_samples_with_one_record_per_shape():
    model = _model()
    sampler = build_sampler(
        "heun", num_steps=5, timeshift=2.0, guidance=2.25, guidance_interval_min=0.1, guidance_interval_max=0.9
    )
    noise, labels, null = torch.randn(3, 3, 16, 16), torch.tensor([1, 2, 3]), torch.full((3,), 10)
    graphed = StandInGraph(model)
    with torch.inference_mode():
        expected = sampler(model, noise, labels, null)
        out = sampler(graphed, noise, labels, null)
        assert graphed.records == 2  # B rows (unguided steps) and 2B rows (guided steps)
        assert graphed.replays == sampler.last_stats["nfe"]
        torch.testing.assert_close(out, expected, rtol=0, atol=0)
        again = sampler(graphed, noise.flip(0), labels.flip(0), null)  # new inputs, same shapes: no new record
        assert graphed.records == 2
        torch.testing.assert_close(again, sampler(model, noise.flip(0), labels.flip(0), null), rtol=0, atol=0)


def test_outputs_do_not_alias_the_graph_buffers():
    graphed = StandInGraph(lambda x, t, c: x * 2)
    with torch.inference_mode():
        first = graphed(torch.ones(2, 3), torch.zeros(2), torch.zeros(2))
        first.add_(100)
        second = graphed(torch.full((2, 3), 3.0), torch.zeros(2), torch.zeros(2))
    assert torch.equal(second, torch.full((2, 3), 6.0)) and torch.equal(first, torch.full((2, 3), 102.0))


def test_with_gradients_on_it_never_records():
    graphed = StandInGraph(lambda x, t, c: x * 2)
    graphed(torch.ones(2), torch.zeros(2), torch.zeros(2))
    assert graphed.num_graphs == 0


def test_bad_arguments():
    with pytest.raises(TypeError, match="callable"):
        GraphedDenoiser(3)
    with pytest.raises(ValueError, match="warmup_calls"):
        GraphedDenoiser(lambda *a: a[0], warmup_calls=0)
    with pytest.raises(TypeError, match="cuda_graphs"):
        generate(_model(), [1], cuda_graphs="yes", progress=False)


def test_value_checks_stand_aside_while_a_cuda_graph_records(monkeypatch):
    """A host sync is illegal during CUDA-graph capture, so the backbone's value checks skip themselves then."""
    import pixelgen.backbones.common as common

    model = _model()
    x, y = torch.randn(2, 3, 16, 16), torch.tensor([1, 2])
    bad_t = torch.tensor([0.5, 2.0])
    with pytest.raises(ValueError):
        model(x, bad_t, y)
    monkeypatch.setattr(common, "_recording_cuda_graph", lambda t: True)
    model(x, bad_t, y)  # no check, no sync
