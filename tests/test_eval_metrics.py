"""Metrics: Fréchet distance against independent computations, IS, precision/recall, reference handling."""

from __future__ import annotations

import json
import warnings
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pixelgen.eval.frechet import GaussianStats, feature_statistics, frechet_distance, trace_sqrt_product
from pixelgen.eval.images import open_images, open_npz_array, write_uint8_npz
from pixelgen.eval.metrics import evaluate, inception_score, load_reference, manifold_radii, precision_recall


def _scipy_fd(f1: np.ndarray, f2: np.ndarray) -> float:
    from scipy import linalg

    m1, m2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    root = linalg.sqrtm(s1 @ s2)
    return float((m1 - m2) @ (m1 - m2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(root).real)


def _fd(f1: np.ndarray, f2: np.ndarray, method: str = "eigh") -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return frechet_distance(feature_statistics(f1), feature_statistics(f2), method=method)


# ------------------------------------------------------------------------------------------- Fréchet distance


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    n=st.integers(5, 120),
    d=st.integers(2, 48),
    shift=st.floats(0.0, 3.0),
    scale=st.floats(0.2, 3.0),
    seed=st.integers(0, 2**31 - 1),
)
def test_frechet_distance_matches_scipy_sqrtm_and_torch_fidelity(n, d, shift, scale, seed):
    """Includes n <= d, where both covariances are singular (near-singular after round-off)."""
    from torch_fidelity.metric_fid import fid_statistics_to_metric

    rng = np.random.default_rng(seed)
    f1 = rng.normal(size=(n, d))
    f2 = rng.normal(size=(n, d)) * scale + shift
    ours = _fd(f1, f2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = _scipy_fd(f1, f2)
        s1 = {"mu": f1.mean(0), "sigma": np.cov(f1, rowvar=False)}
        s2 = {"mu": f2.mean(0), "sigma": np.cov(f2, rowvar=False)}
        tf_value = fid_statistics_to_metric(s1, s2, verbose=False)["frechet_inception_distance"]
    assert ours == pytest.approx(reference, rel=1e-6, abs=1e-9)
    assert ours == pytest.approx(tf_value, rel=1e-6, abs=1e-9)
    assert _fd(f1, f2, "scipy") == pytest.approx(ours, rel=1e-6, abs=1e-9)


def test_frechet_distance_near_singular_covariances():
    """Features confined to a low-dimensional subspace plus a 1e-7 jitter: condition numbers ~1e14."""
    rng = np.random.default_rng(0)
    basis = rng.normal(size=(6, 40))
    f1 = rng.normal(size=(300, 6)) @ basis + 1e-7 * rng.normal(size=(300, 40))
    f2 = (rng.normal(size=(300, 6)) * 1.5 + 0.2) @ basis + 1e-7 * rng.normal(size=(300, 40))
    assert np.linalg.cond(np.cov(f1, rowvar=False)) > 1e12
    ours = _fd(f1, f2)
    assert ours == pytest.approx(_scipy_fd(f1, f2), rel=1e-6)
    assert ours == pytest.approx(_fd(f1, f2, "scipy"), rel=1e-6)


def test_frechet_distance_closed_forms():
    rng = np.random.default_rng(1)
    a = rng.normal(size=(30, 30))
    sigma = a @ a.T / 30
    mu = rng.normal(size=30)
    delta = rng.normal(size=30)
    # equal covariances: only the means differ
    assert frechet_distance(GaussianStats(mu, sigma), GaussianStats(mu + delta, sigma)) == pytest.approx(
        delta @ delta, rel=1e-9
    )
    # diagonal covariances: sum of (sqrt(a) - sqrt(b))^2
    va, vb = rng.uniform(0.1, 4, 30), rng.uniform(0.0, 4, 30)
    expected = ((np.sqrt(va) - np.sqrt(vb)) ** 2).sum()
    assert frechet_distance(
        GaussianStats(np.zeros(30), np.diag(va)), GaussianStats(np.zeros(30), np.diag(vb))
    ) == pytest.approx(expected, rel=1e-9)
    assert trace_sqrt_product(sigma, sigma) == pytest.approx(np.trace(sigma), rel=1e-10)


def test_frechet_input_checks():
    with pytest.raises(ValueError, match="at least 2 samples"):
        feature_statistics(np.zeros((1, 4)))
    with pytest.warns(UserWarning, match="singular"):
        feature_statistics(np.random.default_rng(0).normal(size=(3, 8)))
    with pytest.raises(ValueError, match="dimensional"):
        frechet_distance(GaussianStats(np.zeros(3), np.eye(3)), GaussianStats(np.zeros(4), np.eye(4)))
    with pytest.raises(ValueError, match="NaN"):
        feature_statistics(np.array([[0.0, np.nan], [1.0, 2.0], [3.0, 1.0]]))
    with pytest.raises(ValueError, match="covariance must be"):
        GaussianStats(np.zeros(3), np.eye(2))


# ---------------------------------------------------------------------------------------- IS and precision/recall


def test_inception_score_extremes_and_splits():
    assert inception_score(np.zeros((20, 7)))[0] == pytest.approx(1.0)
    confident = np.full((40, 8), -50.0)
    confident[np.arange(40), np.arange(40) % 8] = 50.0
    assert inception_score(confident)[0] == pytest.approx(8.0, rel=1e-6)
    # consecutive splits: each split of 8 sees every class once -> 8 each; of 4 -> 4 each
    assert inception_score(confident, split_size=8) == pytest.approx((8.0, 0.0), rel=1e-6)
    assert inception_score(confident, split_size=4)[0] == pytest.approx(4.0, rel=1e-6)


def _brute_pr(ref: np.ndarray, gen: np.ndarray, k: int) -> tuple[float, float]:
    def radii(f):
        d = ((f[:, None] - f[None]) ** 2).sum(-1)
        return np.sort(d, axis=1)[:, k]

    rr, rg = radii(ref), radii(gen)
    d = ((gen[:, None] - ref[None]) ** 2).sum(-1)  # (G, R)
    precision = (d <= rr[None]).any(1).mean()
    recall = (d.T <= rg[None]).any(1).mean()
    return float(precision), float(recall)


@settings(max_examples=20, deadline=None)
@given(
    nr=st.integers(5, 40),
    ng=st.integers(5, 40),
    d=st.integers(1, 6),
    k=st.integers(1, 4),
    shift=st.floats(0, 3),
    seed=st.integers(0, 10_000),
)
def test_precision_recall_matches_brute_force(nr, ng, d, k, shift, seed):
    rng = np.random.default_rng(seed)
    ref = rng.normal(size=(nr, d)).astype(np.float32)
    gen = (rng.normal(size=(ng, d)) + shift).astype(np.float32)
    got = precision_recall(ref, gen, k=k, block=7)  # blocks smaller than the sets exercise the tiling
    want = _brute_pr(ref.astype(np.float64), gen.astype(np.float64), k)
    assert got == pytest.approx(want, abs=1.0 / min(nr, ng) + 1e-9)  # float32 ties may flip one point at most


def test_precision_recall_identical_and_disjoint_sets():
    rng = np.random.default_rng(0)
    ref = rng.normal(size=(50, 8))
    assert precision_recall(ref, ref) == (1.0, 1.0)
    assert precision_recall(ref, ref + 100.0) == (0.0, 0.0)
    r = manifold_radii(np.arange(6, dtype=np.float32)[:, None], k=1)
    assert torch.equal(r, torch.ones(6))  # nearest other point of a unit-spaced line
    with pytest.raises(ValueError, match="more than 3 sample"):
        precision_recall(ref, ref[:3], k=3)


# ----------------------------------------------------------------------------------- end-to-end with extractors


class TinyFeatures(torch.nn.Module):
    """A test-made stand-in for Inception: fixed random conv features with the same output names."""

    tag = "tiny-test-net"

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 12, 3, stride=2)
        self.head = torch.nn.Linear(12, 10)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.5)
        self.calls = 0

    @torch.no_grad()
    def forward(self, images):
        self.calls += 1
        h = torch.relu(self.conv(images.float() / 127.5 - 1))
        pool = h.mean((2, 3))
        return {"pool": pool, "spatial": h[:, :2, :3, :3].flatten(1), "logits": self.head(pool)}


def _images(n: int = 48, size: int = 16, seed: int = 0) -> np.ndarray:
    """Smooth random colour images, uint8 NHWC."""
    g = torch.Generator().manual_seed(seed)
    low = torch.rand(n, 3, 4, 4, generator=g)
    x = torch.nn.functional.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    return (x * 200 + 20).round().byte().permute(0, 2, 3, 1).numpy()


def test_fid_of_a_set_with_itself_is_zero_and_grows_with_shift(tmp_path):
    net = TinyFeatures()
    base = _images()
    fids = []
    for shift in (0, 8, 24, 60):
        shifted = np.clip(base.astype(np.int32) + shift, 0, 255).astype(np.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = evaluate(shifted, base, metrics=["fid", "sfid"], inception=net, cache_dir=tmp_path, progress=False)
        fids.append(res["metrics"]["fid"])
    assert abs(fids[0]) < 1e-9
    assert all(a < b for a, b in zip(fids, fids[1:])), fids


def test_real_inception_architecture_with_test_made_weights(tmp_path, monkeypatch):
    """The TF-compatible Inception (random weights written by the test) loads by path and from the torch hub
    cache, gives the ADM feature sizes, FID(self) = 0, and fails offline with a message naming the file."""
    from pixelgen.eval.inception import INCEPTION_WEIGHTS, build_inception
    from pixelgen.utils.hub import WeightsNotFoundError

    net = build_inception("random", seed=3)
    weights = tmp_path / "inception.pth"
    torch.save(net.network.state_dict(), weights)
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    with pytest.raises(WeightsNotFoundError, match=INCEPTION_WEIGHTS.filename):
        build_inception(None)
    hub = tmp_path / "torch_home" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / INCEPTION_WEIGHTS.filename).write_bytes(weights.read_bytes())
    cached = build_inception(None)
    assert cached.tag == build_inception(weights).tag != net.tag

    images = _images(5, 32)
    batch = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous()
    out = net(batch)
    assert {k: tuple(v.shape) for k, v in out.items()} == {"pool": (5, 2048), "logits": (5, 1008), "spatial": (5, 2023)}
    for k, v in cached(batch).items():
        torch.testing.assert_close(v, out[k])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = evaluate(images, images, metrics=["fid", "sfid", "is"], inception=net, cache_dir=tmp_path, progress=False)
    # 5 samples in 2048 dimensions: the square roots of ~2000 round-off eigenvalues leave ~1e-6 of the trace
    traces = {
        k: np.trace(np.cov(out[v].double().numpy(), rowvar=False)) for k, v in (("fid", "pool"), ("sfid", "spatial"))
    }
    assert all(abs(res["metrics"][k]) < 1e-5 * traces[k] for k in traces), (res["metrics"], traces)
    assert res["settings"]["inception"] == "inception-random-3"


def test_reference_npz_statistics_features_cache_and_folder(tmp_path):
    from PIL import Image

    net = TinyFeatures()
    ref_images, samples = _images(40, seed=1), _images(30, seed=2)
    ref_path = tmp_path / "ref.npz"
    np.savez(ref_path, arr_0=ref_images)

    res1 = evaluate(samples, ref_path, inception=net, cache_dir=tmp_path / "cache", progress=False)
    calls = net.calls
    res2 = evaluate(samples, ref_path, inception=net, cache_dir=tmp_path / "cache", progress=False)
    assert res2["metrics"] == res1["metrics"]
    assert net.calls - calls == 1  # only the samples' batch: the reference came from the cache
    assert set(res1["metrics"]) == {"fid", "sfid", "inception_score", "inception_score_std", "precision", "recall"}

    folder = tmp_path / "ref_folder"
    folder.mkdir()
    for i, im in enumerate(ref_images):
        Image.fromarray(im).save(folder / f"{i:03d}.png")
    res3 = evaluate(samples, folder, inception=net, cache_dir=None, progress=False)
    for key, value in res1["metrics"].items():
        assert res3["metrics"][key] == pytest.approx(value, rel=1e-9, abs=1e-12)

    # precomputed ADM-style statistics in the file are used as given
    feats = net(torch.from_numpy(ref_images).permute(0, 3, 1, 2))
    pool = feats["pool"].double().numpy()
    fake_mu = pool.mean(0) + 1.0
    np.savez(tmp_path / "stats.npz", arr_0=ref_images, mu=fake_mu, sigma=np.cov(pool, rowvar=False))
    ref = load_reference(tmp_path / "stats.npz", metrics=["fid", "pr"], inception=net, cache_dir=None, progress=False)
    assert ref.stats_from_file and np.allclose(ref.stats["pool"].mu, fake_mu) and ref.pool_features.shape == (40, 12)
    res4 = evaluate(samples, tmp_path / "stats.npz", metrics=["fid"], inception=net, cache_dir=None, progress=False)
    assert res4["metrics"]["fid"] > res1["metrics"]["fid"]

    # a statistics-only reference gives FID but not precision/recall
    np.savez(tmp_path / "only_stats.npz", mu=fake_mu, sigma=np.cov(pool, rowvar=False))
    assert set(evaluate(samples, tmp_path / "only_stats.npz", inception=net, progress=False)["metrics"]) == {
        "fid",
        "inception_score",
        "inception_score_std",
    }
    with pytest.raises(ValueError, match="need its images"):
        evaluate(samples, tmp_path / "only_stats.npz", metrics=["pr"], inception=net, progress=False)


def test_input_checks(tmp_path):
    net = TinyFeatures()
    good = _images(10)
    np.savez(tmp_path / "float.npz", arr_0=good.astype(np.float32))
    with pytest.raises(TypeError, match="uint8"):
        evaluate(good, tmp_path / "float.npz", inception=net, progress=False)
    np.savez(tmp_path / "nchw.npz", arr_0=good.transpose(0, 3, 1, 2).copy())
    with pytest.raises(ValueError, match="channels-first"):
        evaluate(tmp_path / "nchw.npz", good, inception=net, progress=False)
    np.savez(tmp_path / "bad_mu.npz", mu=np.zeros(5), sigma=np.eye(5))
    from pixelgen.eval.inception import build_inception

    with pytest.raises(ValueError, match="5-dimensional"):
        evaluate(good, tmp_path / "bad_mu.npz", metrics=["fid"], inception=build_inception("random"), progress=False)
    np.savez(tmp_path / "nothing.npz", labels=np.zeros(3))
    with pytest.raises(ValueError, match="neither images"):
        evaluate(good, tmp_path / "nothing.npz", inception=net, progress=False)
    with pytest.raises(ValueError, match="at least 2 samples"):
        evaluate(good[:1], good, metrics=["fid"], inception=net, progress=False)
    with pytest.raises(ValueError, match="more than 3 samples"):
        evaluate(good[:3], good, metrics=["pr"], inception=net, progress=False)
    with pytest.raises(ValueError, match="Unknown metric"):
        evaluate(good, good, metrics=["kid"], inception=net, progress=False)
    with pytest.raises(FileNotFoundError):
        evaluate(tmp_path / "missing.npz", good, inception=net, progress=False)
    with pytest.raises(ValueError, match="needs an Inception feature extractor"):
        load_reference(good, metrics=["fid"], progress=False)
    with pytest.raises(ValueError, match="needs a DINOv2 feature extractor"):
        load_reference(good, metrics=["fd_dinov2"], progress=False)


def test_npz_streaming_writer_is_deterministic_and_memory_mappable(tmp_path):
    images = _images(9)
    a, b = tmp_path / "a.npz", tmp_path / "b.npz"
    write_uint8_npz(a, images.shape, [images[:4], images[4:]])
    write_uint8_npz(b, images.shape, [images[:2], images[2:7], images[7:]])
    assert a.read_bytes() == b.read_bytes()
    with np.load(a) as data:
        assert np.array_equal(data["arr_0"], images)
    mapped = open_npz_array(a)
    assert isinstance(mapped, np.memmap) and np.array_equal(mapped, images)
    np.savez_compressed(tmp_path / "c.npz", arr_0=images)
    assert np.array_equal(open_npz_array(tmp_path / "c.npz"), images)
    assert zipfile.ZipFile(a).getinfo("arr_0.npy").date_time == (1980, 1, 1, 0, 0, 0)
    with pytest.raises(ValueError, match="needs"):
        write_uint8_npz(tmp_path / "short.npz", images.shape, [images[:4]])
    assert not (tmp_path / "short.npz").exists()
    assert len(open_images(a)) == 9


def test_eval_command_writes_json(tmp_path):
    from pixelgen.cli import main

    samples, ref = tmp_path / "samples.npz", tmp_path / "ref.npz"
    np.savez(samples, arr_0=_images(8, 32, seed=4))
    np.savez(ref, arr_0=_images(8, 32, seed=5))
    out = tmp_path / "metrics.json"
    rc = main(
        [
            "eval",
            str(samples),
            "--ref",
            str(ref),
            "--metrics",
            "fid,is,pr",
            "--inception-weights",
            "random",
            "--cache-dir",
            str(tmp_path / "c"),
            "--out",
            str(out),
            "--no-progress",
            "--device",
            "cpu",
        ]
    )
    assert rc == 0
    result = json.loads(out.read_text())
    assert set(result["metrics"]) == {"fid", "inception_score", "inception_score_std", "precision", "recall"}
    assert result["settings"]["inception"] == "inception-random-0" and result["settings"]["num_samples"] == 8
    assert main(["eval", str(samples), "--ref", str(tmp_path / "nope.npz"), "--inception-weights", "random"]) == 2


def test_fd_dinov2_with_a_tiny_test_made_encoder(tmp_path):
    import torch.nn.functional as F

    from pixelgen.eval.dinov2 import build_dinov2_features

    # img_size 224: the position table already has the 16 x 16 grid, so timm's own forward must agree
    feats = build_dinov2_features(
        weights="random", model_overrides=dict(embed_dim=24, depth=2, num_heads=2, init_values=1.0, img_size=224)
    )
    base = _images(12, 32)
    batch = torch.from_numpy(base).permute(0, 3, 1, 2).contiguous()
    out = feats(batch)["dinov2"]
    assert out.shape == (12, 24)
    enc = feats.encoder
    x = F.interpolate(batch.float() / 255, size=(224, 224), mode="bicubic", antialias=True, align_corners=False).clamp(
        0, 1
    )
    with torch.no_grad():
        cls = enc.backbone.forward_features((x - enc.mean) / enc.std)[:, 0]
    torch.testing.assert_close(out, cls)

    np.savez(tmp_path / "ref.npz", arr_0=base)
    values = []
    for shift in (0, 20, 60):
        shifted = np.clip(base.astype(np.int32) + shift, 0, 255).astype(np.uint8)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = evaluate(
                shifted,
                tmp_path / "ref.npz",
                metrics=["fd_dinov2"],
                dinov2=feats,
                cache_dir=tmp_path / "cache",
                progress=False,
            )
        values.append(res["metrics"]["fd_dinov2"])
    assert abs(values[0]) < 1e-6 and values[0] < values[1] < values[2], values
    assert res["settings"]["dinov2"] == feats.tag and feats.tag.startswith("dinov2_vitb14-random0-")
    assert len(list((tmp_path / "cache").glob(f"ref-*-{feats.tag}.npz"))) == 1  # reference statistics cached once
    again = build_dinov2_features(
        weights="random", model_overrides=dict(embed_dim=24, depth=2, num_heads=2, init_values=1.0, img_size=224)
    )
    assert again.tag == feats.tag and torch.equal(again(batch)["dinov2"], out)  # seeded random weights
