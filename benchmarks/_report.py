"""Results as markdown: one table per suite, the targets, and the comparison of two runs.

No jax here: ``--compare`` reads two JSON files and prints, nothing else.
"""

from __future__ import annotations

import math

from benchmarks._harness import ratio

# Column order of the peers; anything else follows alphabetically.
ORDER = ("cnn_jax", "prototype", "lax", "flax", "equinox", "torch", "torch_compile")
SUITE_TITLES = {
    "ops": "Convolutions (ResNet-50, MobileNetV2 / EfficientNet depthwise, 3-D)",
    "pool": "Pooling (ResNet, VGG)",
    "transpose": "Transposed convolutions (U-Net, DCGAN, decoder)",
    "models": "Whole networks: one training step",
    "train": "cnn_jax.train.fit against a PyTorch loop",
}


def _impl_order(names) -> list[str]:
    names = set(names)
    return [n for n in ORDER if n in names] + sorted(names - set(ORDER))


def fmt_ms(t: dict | None) -> str:
    if not t:
        return "-"
    if "median_ms" not in t:
        return "error"
    m = t["median_ms"]
    digits = 3 if m < 1 else (2 if m < 100 else 0)
    return f"{m:.{digits}f}"


def fmt_ratio(r: dict | None) -> str:
    """``0.45`` (faster), ``2.10`` (slower), ``~1.02`` (parity: within the spread),
    ``1.20?`` (a single run, no spread)."""
    if not r:
        return "-"
    mark = {"parity": "~", "single run": ""}.get(r["verdict"], "")
    tail = "?" if r["verdict"] == "single run" else ""
    return f"{mark}{r['ratio']:.2f}{tail}"


def suite_table(suite: str, rows: list[dict]) -> str:
    """A markdown table: per row the times of every implementation (median ms, with the
    interquartile range of cnn_jax's), cnn_jax's ratio to each other, and its rate."""
    names = _impl_order({n for r in rows for n in r.get("impls", {})})
    others = [n for n in names if n != "cnn_jax"]
    models = suite in ("models", "train")
    head = ["case", "pass"] + [f"{n} ms" for n in names] + [f"cnn_jax/{n}" for n in others]
    if "prototype" in names:
        head.append("prototype/torch")
    head.append("cnn_jax img/s" if models else "cnn_jax TFLOP/s")
    head.append("MFU" if models else "% peak")
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        impls = r.get("impls", {})
        if r.get("skipped"):
            lines.append(
                f"| {r['case']} | {r['pass']} | skipped: {r['skipped']} |" + " |" * (len(head) - 3)
            )
            continue
        cells = [r["case"], r["pass"]]
        for n in names:
            t = impls.get(n)
            cell = fmt_ms(t)
            if n == "cnn_jax" and t and "q1_ms" in t and t.get("n", 0) > 1:
                cell += f" [{t['q1_ms']:.3g}-{t['q3_ms']:.3g}]"
            cells.append(cell)
        cells += [fmt_ratio(r["ratios"].get(f"cnn_jax/{n}")) for n in others]
        if "prototype" in names:
            cells.append(fmt_ratio(r["ratios"].get("prototype/torch")))
        cj = impls.get("cnn_jax", {})
        if models:
            cells.append(f"{cj['items_per_s']:,.0f}" if "items_per_s" in cj else "-")
        else:
            cells.append(f"{cj['tflops']:.3f}" if "tflops" in cj else "-")
        frac = cj.get("peak_fraction")
        cells.append(f"{100 * frac:.1f}%" if frac is not None else "-")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def environment_lines(results: dict) -> list[str]:
    env, s = results["environment"], results["settings"]
    peaks = results.get("peaks", {})
    load = [
        f"{name} {', '.join(f'{v:.1f}' for v in env[key])}"
        for name, key in (("start", "load_average_at_start"), ("end", "load_average_at_end"))
        if env.get(key)
    ]
    lines = [
        f"- machine: {env.get('processor')}, {env.get('cpus_usable')} usable cores of "
        f"{env.get('cpu_count')}, {env.get('memory_gib')} GiB; device "
        f"{env['device']} ({env['platform']}); load average (1, 5, 15 min) "
        f"{'; '.join(load)}",
        f"- versions: python {env['python']}, jax {env['jax']}, jaxlib {env.get('jaxlib')}, "
        f"flax {env.get('flax')}, optax {env.get('optax')}, equinox {env.get('equinox')}, "
        f"torch {env.get('torch')}, torchvision {env.get('torchvision')}, numpy "
        f"{env['numpy']}",
        f"- run: {s['date']}, plan {s['plan']}{' --quick' if s['quick'] else ''}, "
        f"{s['repeats']} samples per implementation (fewer for slow cases, never under "
        f"3), {s['wall_s']:.0f} s in all"
        + (f" using {s['cpu_s']:.0f} CPU s" if s.get("cpu_s") else "")
        + f"; precision {s['precision']}",
    ]
    if s.get("interrupted"):
        lines.append(f"- **incomplete**: {s['interrupted']}")
    for suite, err in s.get("errors", {}).items():
        lines.append(f"- **suite {suite} failed**: {err}")
    for dtype, p in peaks.items():
        parts = ", ".join(f"{k} {v / 1e12:.3f}" for k, v in p["by"].items())
        when = "".join(f", {w} of the run {p[w] / 1e12:.3f}" for w in ("start", "end") if p.get(w))
        lines.append(
            f"- measured {dtype} matmul peak: {p['flops'] / 1e12:.3f} TFLOP/s "
            f"({p['shape']}, best sample; {parts}{when})"
        )
    return lines


def markdown(results: dict) -> str:
    out = ["# cnn_jax benchmarks", ""]
    out += environment_lines(results)
    out += [
        "",
        "Median ms per call; `[q1-q3]` is cnn_jax's interquartile range. Ratios are "
        "cnn_jax's median over the other's: **below 1 cnn_jax is faster**; `~` marks "
        "parity (the quartile interval of the ratio contains 1); `?` a single run.",
        "",
    ]
    for suite, rows in results["suites"].items():
        if not rows:
            continue
        out += [f"## {SUITE_TITLES.get(suite, suite)}", "", suite_table(suite, rows), ""]
    train = results.get("records", {}).get("train")
    if train:
        out += ["## cnn-jax, the command", ""] + train_lines(train) + [""]
    out += ["## Targets", ""] + [target_line(t) for t in targets(results)]
    return "\n".join(out) + "\n"


# The lines of the ``train`` record: templates filled from its parts (plus the few
# values derived below: percentages, seeds, an anchor's own keys).
_HELP_LINE = (
    "- `cnn-jax --help` {help_s:.2f} s, `cnn-jax train --help` {train_help_s:.2f} s"
    " (python itself {python_startup_s:.2f} s)"
)
_MAIN_JOB_LINE = (
    "- `cnn-jax train` (digits, new process, cold cache): mean "
    "{cnn_jax_mean_wall_s:.2f} s, accuracy {accuracy_pct:.2f}% over seeds {seeds}"
)
_ANCHOR_LINE = (
    "  - anchor {anchor}: {wall_s:.2f} s, accuracy {accuracy_pct:.2f}%; ratio "
    "cnn-jax / anchor **{ratio:.2f}x**"
)
_WARM_CACHE_LINE = (
    "  - warm compilation cache: wall {wall_s:.2f} s, time to first step "
    "{time_to_first_step_s:.2f} s"
)
_SIDE_JOBS_LINE = (
    "- side jobs (checkpoints, metrics, plots): {side_jobs_pct:.1f}% of an "
    "in-process fit ({fit_s_without_out:.2f} s without an out folder, "
    "{fit_s_with_out:.2f} s with)"
)


def train_lines(rec: dict) -> list[str]:
    lines = []
    if "help" in rec:
        lines.append(_HELP_LINE.format_map(rec["help"]))
    if "main_job" in rec:
        m = rec["main_job"]
        lines.append(
            _MAIN_JOB_LINE.format_map(
                dict(
                    m,
                    accuracy_pct=100 * m["cnn_jax_mean_accuracy"],
                    seeds=[r["seed"] for r in m["rounds"]],
                )
            )
        )
        for anchor in ("digits_torch", "digits_flax"):
            if m.get(f"ratio_cnn_jax_over_{anchor}"):
                lines.append(
                    _ANCHOR_LINE.format(
                        anchor=anchor,
                        wall_s=m[f"{anchor}_mean_wall_s"],
                        accuracy_pct=100 * m[f"{anchor}_mean_accuracy"],
                        ratio=m[f"ratio_cnn_jax_over_{anchor}"],
                    )
                )
        lines.append(_WARM_CACHE_LINE.format_map(m["warm_cache"]))
    if "checkpoint_cost" in rec:
        c = rec["checkpoint_cost"]
        lines.append(
            _SIDE_JOBS_LINE.format_map(dict(c, side_jobs_pct=100 * c["side_jobs_fraction"]))
        )
    return lines


# ------------------------------------------------------------------------ targets


def _rows(results, suite, pass_=None, pred=lambda r: True):
    return [
        r
        for r in results["suites"].get(suite, [])
        if not r.get("skipped") and (pass_ is None or r["pass"] == pass_) and pred(r)
    ]


def _worst(rows, key):
    vals = [(r["ratios"][key]["ratio"], r) for r in rows if key in r["ratios"]]
    return max(vals, key=lambda v: v[0]) if vals else (None, None)


def targets(results: dict) -> list[dict]:
    """The issue's targets, judged from this run's rows (ratios below 1: cnn_jax faster)."""
    out = []
    conv = _rows(results, "ops")
    lax_ratios = [r["ratios"]["cnn_jax/lax"] for r in conv if "cnn_jax/lax" in r["ratios"]]
    if lax_ratios:
        gm = math.exp(sum(math.log(x["ratio"]) for x in lax_ratios) / len(lax_ratios))
        worst = max(lax_ratios, key=lambda x: x["ratio"])
        parity = sum(x["verdict"] == "parity" for x in lax_ratios)
        slower = sum(x["verdict"] == "slower" for x in lax_ratios)
        out.append(
            dict(
                target="wrapper overhead vs raw lax (every ops row)",
                goal="<= 1.02",
                value=gm,
                met=gm <= 1.02,
                detail=f"geometric mean of {len(lax_ratios)} rows; worst "
                f"{worst['ratio']:.2f}; {parity} at parity, {slower} slower",
            )
        )
    for suite, label, pred in (
        ("pool", "max-pool fwd+bwd vs lax autodiff", lambda r: r["case"].startswith("max")),
        ("transpose", "transposed conv fwd+bwd vs lax autodiff", lambda r: True),
    ):
        rows = _rows(results, suite, "fwd+bwd", pred)
        value, row = _worst(rows, "cnn_jax/lax")
        if value is not None:
            out.append(
                dict(
                    target=label,
                    goal="<= 0.5",
                    value=value,
                    met=value <= 0.5,
                    detail=f"worst of {len(rows)} rows: {row['case']}",
                )
            )
    dw = _rows(results, "ops", "fwd+bwd", lambda r: r["case"].startswith("dwconv"))
    on_cpu = results["settings"]["plan"] == "cpu"
    for subject in ("cnn_jax", "prototype"):
        value, row = _worst(dw, f"{subject}/torch")
        if value is not None and on_cpu:
            out.append(
                dict(
                    target=f"depthwise fwd+bwd vs PyTorch CPU ({subject})",
                    goal="<= 1.0",
                    value=value,
                    met=value <= 1.0,
                    detail=f"worst of {len(dw)} rows: {row['case']}",
                )
            )
    r50 = _rows(
        results, "models", pred=lambda r: r["what"] == "resnet50" and r["dtype"] == "bfloat16"
    )
    if r50 and "items_per_s" in r50[0]["impls"].get("cnn_jax", {}):
        ips = r50[0]["impls"]["cnn_jax"]["items_per_s"]
        out.append(
            dict(
                target="ResNet-50 bf16 training on the GPU, images/s",
                goal=">= 3000",
                value=ips,
                met=ips >= 3000,
                detail=f"MFU {100 * r50[0]['impls']['cnn_jax'].get('peak_fraction', 0):.1f}%",
            )
        )
    else:
        out.append(
            dict(
                target="ResNet-50 bf16 training on the GPU, images/s",
                goal=">= 3000",
                value=None,
                met=None,
                detail="not measured: no GPU in this run",
            )
        )
    return out


def target_line(t: dict) -> str:
    if t["met"] is None:
        return f"- {t['target']} {t['goal']}: **{t['detail']}**"
    verdict = "met" if t["met"] else "**missed**"
    value = f"{t['value']:,.0f}" if t["value"] > 100 else f"{t['value']:.2f}"
    return f"- {t['target']} {t['goal']}: {value} ({verdict}; {t['detail']})"


# ------------------------------------------------------------------------ --compare


def compare(a: dict, b: dict, name_a: str = "A", name_b: str = "B") -> str:
    """The ratio table of two results files: per row and implementation, B's median
    over A's (above 1: B is slower), with the verdict from both runs' spreads."""
    rows_a = {_key(r): r for rows in a["suites"].values() for r in rows if not r.get("skipped")}
    lines = [
        f"# {name_b} / {name_a}: ratio of medians (above 1: {name_b} slower; ~ parity)",
        f"# A: {a['environment']['device']} {a['settings']['date']}; "
        f"B: {b['environment']['device']} {b['settings']['date']}",
        "| suite | case | pass | impl | A ms | B ms | B/A |",
        "|---|---|---|---|---|---|---|",
    ]
    logs: dict[str, list[float]] = {}
    matched = 0
    for rows in b["suites"].values():
        for rb in rows:
            ra = rows_a.get(_key(rb))
            if ra is None or rb.get("skipped"):
                continue
            for impl in _impl_order(set(ra["impls"]) & set(rb["impls"])):
                r = ratio(rb["impls"][impl], ra["impls"][impl])
                if r is None:
                    continue
                matched += 1
                logs.setdefault(impl, []).append(math.log(r["ratio"]))
                lines.append(
                    f"| {rb['suite']} | {rb['case']} | {rb['pass']} | {impl} | "
                    f"{fmt_ms(ra['impls'][impl])} | {fmt_ms(rb['impls'][impl])} | "
                    f"{fmt_ratio(r)} |"
                )
    lines.append("")
    lines.append(f"# {matched} matched timings; geometric mean of B/A per implementation:")
    for impl, values in logs.items():
        lines.append(f"#   {impl}: {math.exp(sum(values) / len(values)):.2f} ({len(values)} rows)")
    return "\n".join(lines)


def _key(row: dict) -> tuple:
    return (row["suite"], row["case"], row["pass"], row["dtype"])
