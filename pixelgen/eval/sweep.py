"""A paired, resumable sweep of EMA width × guidance scale × guidance interval, scored by FID or FD-DINOv2.

For every setting the same class-balanced set is drawn (sample ``i`` has class ``i // per_class`` and noise
from ``(seed, i)`` in every setting), so the settings are compared on paired samples and their differences
are not sampling noise of independent sets. The source is a training run with post-hoc EMA snapshots (each EMA
width is reconstructed once into ``<out>/models/``) or one exported model (one EMA, the one it holds).

Layout of ``<out>``::

    sweep_manifest.json     what every setting shares; a rerun with other shared settings is refused
    models/ema_<w>/         reconstructed EMA weights (model.safetensors + config.json)
    settings/<key>/         the setting's sample set (resumable shards) and, once scored, result.json
    sweep.json, sweep.csv   the table, rewritten after every setting
    sweep.png               the metric against guidance scale, one line per EMA width, the best point marked

A finished setting (its ``result.json``) is never recomputed; an interrupted one resumes from its shards.
Every result file records the seeds, the sampler settings, the precision and the software versions.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import shlex
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pixelgen.utils.io import atomic_save_json, atomic_write
from pixelgen.utils.versions import software_versions

__all__ = ["SweepSetting", "SweepResult", "run_sweep", "plot_sweep", "PRECISIONS", "final_commands", "ema_order"]

log = logging.getLogger(__name__)

SWEEP_FORMAT = "pixelgen-sweep-v1"
PRECISIONS = {"fp32": None, "bf16": torch.bfloat16}
SWEEP_METRICS = ("fid", "fd_dinov2")


@dataclass(frozen=True)
class SweepSetting:
    """One point of the grid. ``ema`` is the label of the EMA (a relative width, or ``"model"``)."""

    ema: str
    guidance: float
    interval: tuple[float, float]

    @property
    def key(self) -> str:
        return f"ema{self.ema}_cfg{self.guidance:g}_int{self.interval[0]:g}-{self.interval[1]:g}"


@dataclass
class SweepResult:
    out_dir: Path
    rows: list[dict[str, Any]]
    best: dict[str, Any]
    table_json: Path
    table_csv: Path
    plot: Path | None
    commands: list[str]
    reused: int
    computed: int


def _floats(values: Sequence[float], what: str) -> list[float]:
    out = []
    for v in values:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise ValueError(f"{what} values must be finite numbers, got {v!r}.")
        out.append(float(v))
    if not out:
        raise ValueError(f"Give at least one {what} value.")
    if len(set(out)) != len(out):
        raise ValueError(f"{what} values must be distinct, got {out}.")
    return out


def _source_kind(source: Path) -> str:
    if (source / "posthoc_ema").is_dir():
        return "run"
    if (source / "model.safetensors").is_file() and (source / "config.json").is_file():
        return "model"
    raise FileNotFoundError(
        f"{source} is neither a training run with post-hoc EMA snapshots (posthoc_ema/) nor a model folder "
        "(model.safetensors + config.json)."
    )


def _check_manifest(out: Path, manifest: Mapping[str, Any]) -> None:
    path = out / "sweep_manifest.json"
    manifest = json.loads(json.dumps(manifest, default=str))
    if path.is_file():
        stored = json.loads(path.read_text())
        diff = [k for k in manifest if stored.get(k) != manifest[k]]
        if diff:
            desc = "; ".join(f"{k}: {stored.get(k)!r} there, {manifest[k]!r} now" for k in diff[:3])
            raise ValueError(f"{out} holds a sweep with other shared settings ({desc}); choose another --out.")
    else:
        atomic_save_json(dict(manifest), path)


def _classic_model(source: Path, step: int, out: Path) -> tuple[Path, dict[str, Any]]:
    """The run's classic EMA at ``step`` (from the training checkpoint of that step) as a model folder."""
    from pixelgen.backbones import build_model
    from pixelgen.checkpoint import save_pretrained
    from pixelgen.train.checkpointing import load_training_checkpoint

    folder = out / "models" / "ema_classic"
    if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
        record = json.loads((folder / "config.json").read_text()).get("classic_ema")
        if record and record.get("step") == step:
            return folder, record
    for path in (source / "checkpoints" / f"step_{step:07d}.pt", source / "checkpoints" / "latest.pt"):
        if path.is_file():
            state = load_training_checkpoint(path)
            if int(state["step"]) == step:
                break
    else:
        raise FileNotFoundError(
            f"No training checkpoint of {source} is at step {step}, so its classic EMA cannot be compared there; "
            "give --step of a kept checkpoint (checkpoints/step_*.pt) or of the latest one."
        )
    # the backbone as the snapshots name it (the live model's arch/config; the config file may name another
    # when a model was passed to the trainer directly)
    from pixelgen.train.posthoc_ema import backbone_of

    arch, config = backbone_of(source)
    model = build_model(arch, device="meta", **config)
    model.load_state_dict(state["ema"], strict=True, assign=True)
    record = {"step": step, "decay": state["config"].get("ema_decay"), "checkpoint": str(path)}
    save_pretrained(model, folder, extra={"classic_ema": record})
    return folder, record


def _ema_models(
    source: Path, kind: str, emas: list[float] | None, classic: bool, step: int | None, out: Path
) -> dict[str, tuple[Path, dict[str, Any] | None]]:
    """label -> (model folder, record of how its weights were made)."""
    if kind == "model":
        meta = json.loads((source / "config.json").read_text())
        return {"model": (source, meta.get("posthoc_ema"))}
    from pixelgen.train.posthoc_ema import export_reconstruction

    models = {}
    for sigma in emas or []:
        label = f"{sigma:g}"
        folder = out / "models" / f"ema_{label}"
        record = None
        if (folder / "config.json").is_file() and (folder / "model.safetensors").is_file():
            record = json.loads((folder / "config.json").read_text()).get("posthoc_ema")
            if not record or record.get("sigma_rel") != sigma or record.get("step") != step:
                record = None
        if record is None:
            export_reconstruction(source, sigma, folder, step=step)
            record = json.loads((folder / "config.json").read_text())["posthoc_ema"]
        models[label] = (folder, record)
    if classic:
        models["classic"] = _classic_model(source, step, out)
    return models


def _resolved_step(source: Path, kind: str, step: int | None) -> int | None:
    if kind != "run":
        if step is not None:
            raise ValueError("--step applies to a training run's snapshots, not to an exported model.")
        return None
    from pixelgen.train.posthoc_ema import list_snapshots

    steps = sorted({s.step for s in list_snapshots(source)})
    if not steps:
        raise FileNotFoundError(f"{source}/posthoc_ema holds no complete snapshot yet.")
    return steps[-1] if step is None else step


def _write_table(out: Path, rows: list[dict[str, Any]], shared: Mapping[str, Any], metric: str) -> tuple[Path, Path]:
    best = min(rows, key=lambda r: r["value"]) if rows else None
    table = {**shared, "rows": rows, "best": best}
    json_path = atomic_save_json(table, out / "sweep.json")
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["key", "ema", "guidance", "interval_min", "interval_max", metric, "sampling_s", "scoring_s"])
    for r in sorted(rows, key=lambda r: (r["ema"], r["interval"], r["guidance"])):
        writer.writerow(
            [r["key"], r["ema"], r["guidance"], r["interval"][0], r["interval"][1], r["value"]]
            + [r["seconds"]["sampling"], r["seconds"]["scoring"]]
        )
    csv_path = out / "sweep.csv"
    with atomic_write(csv_path) as tmp:
        tmp.write_text(buf.getvalue())
    return json_path, csv_path


def plot_sweep(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike, *, metric: str, title: str = "") -> Path:
    """PNG of the metric against guidance scale: one line per EMA width (and interval), the best point starred."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not rows:
        raise ValueError("No sweep results to plot.")
    intervals = sorted({tuple(r["interval"]) for r in rows})
    groups: dict[tuple[str, tuple[float, float]], list[Mapping[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["ema"], tuple(r["interval"])), []).append(r)
    fig, ax = plt.subplots(figsize=(7.0, 4.5), dpi=120)
    styles = ["-", "--", ":", "-."]
    for (ema, interval), pts in sorted(groups.items(), key=lambda kv: (ema_order(kv[0][0]), kv[0][1])):
        pts = sorted(pts, key=lambda r: r["guidance"])
        label = {"model": "model's EMA", "classic": "classic EMA"}.get(ema, f"EMA σ_rel={ema}")
        if len(intervals) > 1:
            label += f", interval ({interval[0]:g}, {interval[1]:g}]"
        ax.plot(
            [p["guidance"] for p in pts],
            [p["value"] for p in pts],
            styles[intervals.index(interval) % len(styles)],
            marker="o",
            label=label,
        )
    best = min(rows, key=lambda r: r["value"])
    ax.scatter([best["guidance"]], [best["value"]], marker="*", s=320, color="crimson", zorder=5, label="best")
    at_right = best["guidance"] >= max(r["guidance"] for r in rows)
    ax.annotate(
        f"best {best['value']:.4g}\nEMA {best['ema']}, cfg {best['guidance']:g}",
        (best["guidance"], best["value"]),
        textcoords="offset points",
        xytext=(-12, 12) if at_right else (12, 12),
        ha="right" if at_right else "left",
        fontsize=8,
    )
    ax.set_xlabel("guidance scale")
    ax.set_ylabel(metric.upper().replace("_", "-"))
    ax.set_title(title, fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    with atomic_write(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
    return Path(path)


def ema_order(label: str) -> tuple[float, str]:
    """Sort key of EMA labels: widths by value, then the classic EMA and a model's own."""
    try:
        return float(label), ""
    except ValueError:
        return math.inf, label


def _sample_flags(sampler: str, params: Mapping[str, Any]) -> list[str]:
    """``pixelgen sample`` flags that reproduce ``sampler``/``params``."""
    flags = ["--sampler", sampler]
    p = dict(params)
    if "num_steps" in p:
        flags += ["--steps", f"{p.pop('num_steps')}"]
    if "timeshift" in p:
        flags += ["--shift", f"{p.pop('timeshift'):g}"]
    if "guidance" in p:
        flags += ["--guidance", f"{p.pop('guidance'):g}"]
    lo, hi = p.pop("guidance_interval_min", None), p.pop("guidance_interval_max", None)
    if lo is not None or hi is not None:
        flags += ["--interval", f"{(lo if lo is not None else 0.0):g}", f"{(hi if hi is not None else 1.0):g}"]
    if p.pop("exact_henu", True) is False:
        flags.append("--lazy-heun")
    if p.pop("exact_final_step", False):
        flags.append("--exact-final-step")
    if "order" in p:
        flags += ["--order", f"{p.pop('order')}"]
    if p:
        raise ValueError(f"Sampler parameters {sorted(p)} cannot be set from the command line.")
    return flags


def final_commands(
    best: Mapping[str, Any], out: Path, *, reference: str, metric: str, final_num: int, num_classes: int
) -> list[str]:
    """The commands that make and score the final sample set of the best setting. The final set uses another
    seed than the sweep, so the reported number is not measured on the samples that chose the setting."""
    per_class = max(1, final_num // num_classes)
    target = out / f"final_{best['key']}"
    sample = ["pixelgen", "sample", "--checkpoint", str(best["model"])]
    sample += _sample_flags(best["sampler"], best["sampler_params"])
    sample += ["--num-samples", str(final_num), "--per-class", str(per_class), "--seed", str(best["seed"] + 1)]
    sample += ["--precision", best["precision"], "--out", str(target)]
    score = ["pixelgen", "eval", str(target / "samples.npz"), "--ref", str(reference), "--metrics", metric]
    return [shlex.join(sample), shlex.join(score)]


def _feature_networks(metric: str, inception, inception_weights, dinov2, dinov2_weights, device):
    if metric == "fid" and inception is None:
        from pixelgen.eval.inception import build_inception

        inception = build_inception(inception_weights, device=device)
    if metric == "fd_dinov2" and dinov2 is None:
        from pixelgen.eval.dinov2 import build_dinov2_features

        dinov2 = build_dinov2_features(weights=dinov2_weights, device=device)
    net = inception if metric == "fid" else dinov2
    tag = getattr(net, "tag", None)
    if tag is None:
        raise TypeError("The feature network needs a `tag` naming its weights (recorded with every score).")
    return inception, dinov2, tag


def run_sweep(
    source: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    reference: str | os.PathLike,
    guidance: Sequence[float],
    intervals: Sequence[tuple[float, float]] = ((0.0, 1.0),),
    ema: Sequence[float] | None = None,
    num: int,
    per_class: int | None = None,
    metric: str = "fid",
    sampler: str = "heun",
    sampler_params: Mapping[str, Any] | None = None,
    seed: int = 0,
    batch_size: int = 32,
    shard_size: int = 1000,
    precision: str = "fp32",
    device: str | torch.device | None = None,
    step: int | None = None,
    inception: Callable | None = None,
    inception_weights: str | os.PathLike | None = None,
    dinov2: Callable | None = None,
    dinov2_weights: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    keep_samples: bool = False,
    final_num: int = 50_000,
    progress: bool = True,
    on_setting_done: Callable[[dict[str, Any]], None] | None = None,
) -> SweepResult:
    """Run (or resume) the sweep described in the module doc and return its table.

    ``guidance``/``intervals``/``ema``: the grid (``ema``: relative widths for a run, and ``"classic"`` for the
    run's classic EMA at the same step, read from its training checkpoint of that step; None for a model).
    ``sampler``/``sampler_params``: everything else the sampler takes (guidance and its interval come from the
    grid). ``inception``/``dinov2``: ready feature extractors (tests), else built from ``*_weights``
    (None: the offline-first rule; ``"random"`` only when asked). ``on_setting_done``: called with each new row.
    """
    from pixelgen.checkpoint import load_pretrained
    from pixelgen.eval.generation import SAMPLES_NAME, generate_class_samples
    from pixelgen.eval.metrics import evaluate

    source, out = Path(source), Path(out_dir)
    if metric not in SWEEP_METRICS:
        raise ValueError(f"metric must be one of {', '.join(SWEEP_METRICS)}, got {metric!r}.")
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be fp32 or bf16, got {precision!r}.")
    if isinstance(num, bool) or not isinstance(num, int) or num < 2:
        raise ValueError(f"num must be an integer of at least 2 (a Fréchet distance needs 2 samples), got {num!r}.")
    guidance = _floats(guidance, "guidance")
    if any(g < 0 for g in guidance):
        raise ValueError(f"guidance scales must be non-negative, got {guidance}.")
    intervals = [tuple(_floats(list(iv), "interval")) for iv in intervals]
    for lo, hi in intervals:
        if len((lo, hi)) != 2 or not 0.0 <= lo < hi <= 1.0:
            raise ValueError(f"A guidance interval must be (min, max) with 0 <= min < max <= 1, got ({lo}, {hi}).")
    classic = any(e == "classic" for e in ema or [])
    widths = [e for e in ema or [] if e != "classic"]
    emas = _floats(widths, "ema") if widths else None
    base_params = {
        k: v
        for k, v in dict(sampler_params or {}).items()
        if k not in ("guidance", "guidance_interval_min", "guidance_interval_max")
    }
    kind = _source_kind(source)
    if kind == "model" and (emas or classic):
        raise ValueError(
            f"{source} is one exported model; --ema widths need a training run with post-hoc EMA snapshots."
        )
    if kind == "run":
        if not emas and not classic:
            raise ValueError(f"{source} is a training run: give the EMA widths to compare (--ema 0.05,0.1).")
        from pixelgen.train.posthoc_ema import sigma_rel_to_gamma

        for sigma in emas or []:
            sigma_rel_to_gamma(sigma)  # range check, one sentence
    step = _resolved_step(source, kind, step)
    inception, dinov2, feature_tag = _feature_networks(
        metric, inception, inception_weights, dinov2, dinov2_weights, device or "cpu"
    )
    if "random" in feature_tag:
        log.warning("scores use RANDOM %s feature weights (%s): meaningful only as a smoke test", metric, feature_tag)
    shared = {
        "format": SWEEP_FORMAT,
        "source": str(source.resolve()),
        "kind": kind,
        "step": step,
        "num": num,
        "per_class": per_class,
        "seed": seed,
        "sampler": sampler,
        "sampler_params": base_params,
        "precision": precision,
        "metric": metric,
        "reference": str(reference),
        "features": feature_tag,
    }
    out.mkdir(parents=True, exist_ok=True)
    _check_manifest(out, shared)
    models = _ema_models(source, kind, emas, classic, step, out)

    settings = [SweepSetting(label, g, iv) for label in models for iv in intervals for g in guidance]
    rows: list[dict[str, Any]] = []
    reused = computed = 0
    loaded: dict[str, torch.nn.Module] = {}
    autocast = PRECISIONS[precision]
    num_classes = None
    title = (
        f"{metric} of {num} paired samples per setting, {sampler} {base_params.get('num_steps', '')} steps, {precision}"
    )
    if "random" in feature_tag:
        title += f"\nRANDOM feature weights ({feature_tag}): smoke test only"
    for setting in settings:
        folder = out / "settings" / setting.key
        result_path = folder / "result.json"
        if result_path.is_file():
            row = json.loads(result_path.read_text())
            rows.append(row)
            reused += 1
            num_classes = num_classes or row.get("num_classes")
            continue
        model_dir, record = models[setting.ema]
        if setting.ema not in loaded:
            loaded.clear()  # one model in memory at a time
            loaded[setting.ema] = load_pretrained(model_dir, device=device or "cpu")
        model = loaded[setting.ema]
        num_classes = int(model.num_classes)
        pc = per_class or max(1, num // num_classes)
        if math.ceil(num / pc) < num_classes:
            log.warning(
                "%d samples at %d per class cover only the first %d of %d classes",
                num,
                pc,
                math.ceil(num / pc),
                num_classes,
            )
        params = {
            **base_params,
            "guidance": setting.guidance,
            "guidance_interval_min": setting.interval[0],
            "guidance_interval_max": setting.interval[1],
        }
        started = time.time()
        generated = generate_class_samples(
            model,
            folder / "samples",
            num=num,
            per_class=pc,
            sampler=sampler,
            sampler_params=params,
            seed=seed,
            batch_size=batch_size,
            shard_size=shard_size,
            device=device,
            autocast_dtype=autocast,
            num_grids=1,
            run_info={"model": str(model_dir), "precision": precision},
            progress=progress,
        )
        if generated.samples is None:
            raise RuntimeError(f"The sample set of {setting.key} is not complete; rerun the sweep to continue.")
        sampled = time.time()
        scored = evaluate(
            generated.samples,
            reference,
            metrics=[metric],
            inception=inception,
            dinov2=dinov2,
            cache_dir=cache_dir,
            device=device or "cpu",
            progress=progress,
        )
        value = float(scored["metrics"][metric])
        if not math.isfinite(value):
            raise ValueError(f"The {metric} of {setting.key} is not finite ({value}).")
        row = {
            "key": setting.key,
            "ema": setting.ema,
            "guidance": setting.guidance,
            "interval": list(setting.interval),
            "metric": metric,
            "value": value,
            "model": str(model_dir),
            "reconstruction": record,
            "num": num,
            "per_class": pc,
            "num_classes": num_classes,
            "labels": "sample i has class i // per_class",
            "seed": seed,
            "noise": "sample i starts from noise seeded by (seed, i), the same in every setting",
            "sampler": sampler,
            "sampler_params": params,
            "precision": precision,
            "evaluation": scored["settings"],
            "versions": software_versions(),
            "seconds": {"sampling": round(sampled - started, 2), "scoring": round(time.time() - sampled, 2)},
        }
        atomic_save_json(row, result_path)
        if not keep_samples:
            (folder / "samples" / SAMPLES_NAME).unlink(missing_ok=True)
        rows.append(row)
        computed += 1
        log.info("%s: %s = %.4f", setting.key, metric, value)
        _write_table(out, rows, shared, metric)
        plot_sweep(rows, out / "sweep.png", metric=metric, title=title)
        if on_setting_done is not None:
            on_setting_done(row)

    json_path, csv_path = _write_table(out, rows, shared, metric)
    plot = plot_sweep(rows, out / "sweep.png", metric=metric, title=title)
    best = min(rows, key=lambda r: r["value"])
    commands = final_commands(
        best, out, reference=str(reference), metric=metric, final_num=final_num, num_classes=num_classes or 1
    )
    table = json.loads(json_path.read_text())
    table["final_commands"] = commands
    atomic_save_json(table, json_path)
    loaded.clear()
    return SweepResult(out, rows, best, json_path, csv_path, plot, commands, reused, computed)
