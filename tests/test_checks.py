"""The shared input checks (pixelgen.utils.checks): what they accept, and one clear sentence for what they refuse."""

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from pixelgen.utils.checks import check_image_batch, check_labels, check_same_shape, check_tensor, check_timesteps


@given(st.lists(st.floats(0.0, 1.0), min_size=1, max_size=8))
@settings(max_examples=30, deadline=None)
def test_timesteps_in_the_unit_interval_pass(values):
    t = torch.tensor(values)
    assert check_timesteps(t, len(values)) is t


@pytest.mark.parametrize(
    "values,got",
    [
        ([0.5, 1.5], "values in \\[0.5, 1.5\\]"),
        ([-0.1, 0.2], "values in \\[-0.1, 0.2\\]"),
        ([0.1, float("inf")], "values in \\[0.1, inf\\]"),
        ([0.5, float("nan")], "NaN"),
        ([float("nan"), 0.5], "NaN"),
    ],
)
def test_timesteps_outside_the_unit_interval_fail(values, got):
    with pytest.raises(ValueError, match=f"^t must lie in \\[0, 1\\] \\(0 = noise, 1 = data\\), got {got}\\.$"):
        check_timesteps(torch.tensor(values), len(values))


def test_timestep_shape_and_type():
    with pytest.raises(ValueError, match="t must have shape \\(3,\\)"):
        check_timesteps(torch.rand(2), 3)
    with pytest.raises(TypeError, match="t must be a floating-point tensor"):
        check_timesteps(torch.tensor([0, 1]), 2)
    assert check_timesteps(torch.empty(0), 0).shape == (0,)


@given(st.integers(1, 20), st.data())
@settings(max_examples=30, deadline=None)
def test_labels_accept_the_range_and_the_null_class_only_when_allowed(num_classes, data):
    labels = data.draw(st.lists(st.integers(0, num_classes), min_size=1, max_size=8))
    y = torch.tensor(labels)
    assert check_labels(y, num_classes) is y
    if num_classes in labels:
        with pytest.raises(ValueError, match=f"class indices in \\[0, {num_classes - 1}\\], got values in"):
            check_labels(y, num_classes, allow_null=False)
    else:
        assert check_labels(y, num_classes, allow_null=False) is y


def test_label_errors():
    with pytest.raises(
        ValueError,
        match="^y must be class indices in \\[0, 5\\] \\(5 is the null class\\), got values in \\[-1, 2\\]\\.$",
    ):
        check_labels(torch.tensor([-1, 2]), 5)
    with pytest.raises(ValueError, match="got values in \\[0, 6\\]"):
        check_labels(torch.tensor([0, 6]), 5)
    with pytest.raises(ValueError, match="labels has 2 labels but the batch has 3 images"):
        check_labels(torch.tensor([0, 1]), 5, "labels", batch=3)
    with pytest.raises(TypeError, match="y must be an integer tensor"):
        check_labels(torch.tensor([0.0]), 5)
    assert check_labels(torch.empty(0, dtype=torch.long), 5).shape == (0,)


def test_tensor_and_image_checks():
    with pytest.raises(TypeError, match="x must be a torch.Tensor, got list"):
        check_tensor([1.0], "x")
    with pytest.raises(ValueError, match="x must have 4 dimensions, got shape \\(3, 8, 8\\)"):
        check_image_batch(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="x must have 3 channels"):
        check_image_batch(torch.rand(1, 4, 8, 8), channels=3)
    with pytest.raises(ValueError, match="x must be 16x16 pixels for this model, got 8x8"):
        check_image_batch(torch.rand(1, 3, 8, 8), size=16)
    with pytest.raises(ValueError, match="not a multiple of the patch size 3"):
        check_image_batch(torch.rand(1, 3, 8, 8), multiple_of=3)
    with pytest.raises(ValueError, match="a and b must have the same shape, got \\(2,\\) and \\(3,\\)"):
        check_same_shape(torch.rand(2), torch.rand(3), "a", "b")
