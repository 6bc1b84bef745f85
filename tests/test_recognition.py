"""The recognition figure: a small classifier trained on real crops judges class-conditional samples."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import pixelgen
from pixelgen.data.demo import DemoDataset
from pixelgen.eval.recognition import (
    Recognizer,
    classify,
    demo_recognition,
    demo_reference_images,
    patch_seam_ratio,
    recognition_report,
    sample_recognition,
    train_recognizer,
)

RES = 16  # small crops keep the classifier's training to a second or two


@pytest.fixture(scope="module")
def recognizer():
    images, labels = demo_reference_images(RES, per_class=24)
    return train_recognizer(images, labels, 10, steps=120, batch_size=48)


def held_out(res=RES):
    data = DemoDataset(res, samples_per_class=6, seed=321, crop_scale=(0.5, 1.0))
    return data.pixels, torch.arange(10).repeat_interleave(6)


def test_the_classifier_recognises_held_out_real_crops_and_not_noise(recognizer):
    images, labels = held_out()
    assert recognition_report(classify(recognizer, images), labels)["recognised"] >= 0.9
    # Noise is not recognised as the classes it is labelled with (one class at most wins by chance).
    noise = torch.randint(0, 256, images.shape, generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    assert recognition_report(classify(recognizer, noise), labels)["recognised"] <= 0.3


def test_training_is_deterministic_and_leaves_the_global_rng_alone():
    images, labels = demo_reference_images(RES, per_class=4)
    state = torch.random.get_rng_state()
    a = train_recognizer(images, labels, 10, steps=3, batch_size=8, seed=5)
    assert torch.equal(torch.random.get_rng_state(), state)
    b = train_recognizer(images, labels, 10, steps=3, batch_size=8, seed=5)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(x, y), name
    assert not a.training


def test_report_counts_per_class_and_confusion():
    report = recognition_report(torch.tensor([0, 0, 1, 0]), torch.tensor([0, 0, 1, 1]), ["a", "b"])
    assert report["recognised"] == 0.75 and report["samples"] == 4
    assert report["per_class"] == {"a": 1.0, "b": 0.5}
    assert report["confusion"] == {"a": {"a": 2}, "b": {"a": 1, "b": 1}}
    with pytest.raises(ValueError, match="equal-length"):
        recognition_report(torch.tensor([0]), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="too few"):
        recognition_report(torch.tensor([2]), torch.tensor([0]), ["a", "b"])


def test_patch_seam_ratio_sees_a_block_grid():
    photos = DemoDataset(32, samples_per_class=2).pixels
    blocks = F.interpolate(F.avg_pool2d(photos.float(), 4), scale_factor=4, mode="nearest").to(torch.uint8)
    assert 0.8 < patch_seam_ratio(photos, 4) < 1.25
    assert patch_seam_ratio(blocks, 4) > 3.0
    assert patch_seam_ratio(torch.full((1, 3, 8, 8), 7, dtype=torch.uint8), 4) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="at least 2"):
        patch_seam_ratio(photos, 1)
    with pytest.raises(TypeError, match="uint8"):
        patch_seam_ratio(photos.float(), 4)


def test_input_checks(recognizer):
    images, labels = demo_reference_images(8, per_class=1)
    with pytest.raises(ValueError, match="one per image"):
        train_recognizer(images, labels[:-1], 10)
    with pytest.raises(ValueError):
        train_recognizer(images, labels + 5, 10)  # labels beyond the classes
    with pytest.raises(ValueError, match="steps"):
        train_recognizer(images, labels, 10, steps=0)
    with pytest.raises(TypeError, match="uint8"):
        classify(recognizer, images.float())
    with pytest.raises(ValueError, match="num_classes"):
        Recognizer(1)


def tiny_demo_model(num_classes=10):
    torch.manual_seed(0)
    return pixelgen.build_model(
        "jit",
        input_size=RES,
        patch_size=4,
        hidden_size=32,
        depth=2,
        num_heads=2,
        num_classes=num_classes,
        bottleneck_dim=16,
        in_context_len=0,
    ).eval()


def test_samples_of_an_untrained_model_are_not_recognised(recognizer):
    report = sample_recognition(
        tiny_demo_model(), recognizer, sampler=pixelgen.build_sampler("euler", num_steps=2), per_class=3
    )
    assert report["samples"] == 30 and set(report["per_class"]) == {str(c) for c in range(10)}
    assert report["recognised"] <= 0.5
    assert report["patch_seams"] == pytest.approx(1.0)  # the zero-initialised output layer draws flat grey


def test_demo_recognition_reports_the_classifier_on_real_crops():
    report = demo_recognition(
        tiny_demo_model(), sampler=pixelgen.build_sampler("euler", num_steps=2), per_class=2, classifier_steps=10
    )
    assert set(report) >= {"recognised", "per_class", "confusion", "classifier_real", "patch_seams"}
    assert "cat" in report["per_class"] and report["samples"] == 20
    assert 0.0 <= report["classifier_real"] <= 1.0  # its quality: the first test
    with pytest.raises(ValueError, match="10 demo classes"):
        demo_recognition(tiny_demo_model(4), per_class=1)
