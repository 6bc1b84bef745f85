"""The suite's outputs: ``suite.md`` and the table printed at the end."""

from __future__ import annotations

from typing import Any

from .common import log


def markdown(report: dict[str, Any]) -> str:
    meta = report["meta"]
    lines = [
        f"# GPU suite, {meta['date']}",
        "",
        f"Device: {meta['device_name']}; torch {meta['torch']}, CUDA {meta['cuda']}; sizes: {meta['sizes']}; "
        f"peak for MFU: {meta['peak_tflops']} TFLOP/s bf16 dense. {meta['weights_note']}",
        f"FLOPs: {meta['flops_note']}",
        "",
        "| what | ms | images/s | peak GiB | TFLOP/s | MFU | original images/s | × original | target |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in report["results"]:
        if "error" in row:
            lines.append(f"| {row['name']} | error: {row['error']} | | | | | | | |")
            continue
        original = (row.get("original") or {}).get("images_per_s")
        mfu = row.get("mfu")
        lines.append(
            "| {name} | {ms} | {ips} | {peak} | {tf} | {mfu} | {orig} | {speed} | {target} |".format(
                name=row["name"],
                ms=_cell(row.get("ms"), "{:.1f}"),
                ips=_cell(row.get("images_per_s"), "{:.1f}"),
                peak=_cell(row.get("peak_gib"), "{:.1f}"),
                tf=_cell(row.get("tflops"), "{:.3g}"),
                mfu=_cell(None if mfu is None else 100 * mfu, "{:.1f}%"),
                orig=_cell(original, "{:.1f}"),
                speed=_cell(row.get("speedup"), "{:.2f}×"),
                target=""
                if row.get("meets_target") is None
                else ("met" if row["meets_target"] else f"missed ({row['target_images_per_s']:g})"),
            )
        )
    correctness = report.get("correctness")
    if correctness:
        lines += ["", "## Correctness (relative errors; tolerance in suite.json)", ""]
        terms = correctness.get("loss_terms", {})
        for label in ("bf16", "bf16_frozen_bf16_nhwc"):
            if label in terms:
                rel = terms[label]["rel_err"]
                lines.append(
                    f"- loss terms {label} vs float32: "
                    + ", ".join(f"{k} {v:.1e}" for k, v in rel.items())
                    + f" — {'ok' if terms[label]['ok'] else 'OUT'}"
                )
        for setting, item in correctness.get("sampler", {}).items():
            lines.append(
                f"- sampler {setting} bf16 vs float32: {item['rel_err']:.1e}, max {item['max_uint8_diff']}/255 — {'ok' if item['ok'] else 'OUT'}"
            )
        for name, item in correctness.get("attention", {}).items():
            text = (
                item.get("unavailable")
                or f"out {item['rel_err_out']:.1e}, grads {item['rel_err_grad']:.1e} — {'ok' if item['ok'] else 'OUT'}"
            )
            lines.append(f"- attention {name}: {text}")
    if report["skipped"]:
        lines += ["", "## Skipped", ""] + [f"- {s}" for s in report["skipped"]]
    lines += ["", "Elapsed per section (s): " + ", ".join(f"{k} {v}" for k, v in report["elapsed_s"].items()), ""]
    return "\n".join(lines)


def _cell(value: float | None, fmt: str) -> str:
    return "" if value is None else fmt.format(value)


def print_table(report: dict[str, Any]) -> None:
    log("")
    log(f"{'what':62s} {'ms':>9s} {'img/s':>8s} {'GiB':>6s} {'TFLOP/s':>8s} {'MFU':>6s} {'orig':>6s} {'×':>6s}")
    for row in report["results"]:
        if "error" in row:
            log(f"{row['name'][:62]:62s} error: {row['error'][:80]}")
            continue
        original = (row.get("original") or {}).get("images_per_s")
        mfu = row.get("mfu")
        log(
            f"{row['name'][:62]:62s} {_cell(row.get('ms'), '{:9.1f}'):>9s} {_cell(row.get('images_per_s'), '{:8.1f}'):>8s} "
            f"{_cell(row.get('peak_gib'), '{:6.1f}'):>6s} {_cell(row.get('tflops'), '{:8.3g}'):>8s} "
            f"{_cell(None if mfu is None else 100 * mfu, '{:5.1f}%'):>6s} {_cell(original, '{:6.1f}'):>6s} {_cell(row.get('speedup'), '{:5.2f}×'):>6s}"
        )
