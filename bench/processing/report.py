"""The processing benchmark's tables and rules: each figure as a `Row`, each rule PASS or
FAIL."""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Sequence

from bench.processing.original import Result
from bench.processing.ours import NO_SIBLING_MATCHES, StrengthRun
from bench.verdict import Row, at_least, at_most, exactly
from refresher.media.effects import Strength

# Variations per minute against the original's, at least: at subtle, and at the others.
TARGET_RATIO = 5.0
OTHER_STRENGTHS_RATIO = 3.0
# Measuring's share of the time per variation, at most.
MAX_MEASURE_SHARE = 0.15
# Not matched to their source, at least, per strength (of the variations made).
MIN_UNMATCHED_SHARE = {Strength.STANDARD: 0.7, Strength.STRONG: 0.9}


class Rules:
    """The rules checked, each printed with PASS or FAIL, and every figure as a `Row`."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.passed = True
        self.rows: list[Row] = []

    def check(self, holds: bool, text: str) -> None:
        self.passed = self.passed and holds
        self.lines.append(f"{'PASS' if holds else 'FAIL'}  {text}")

    def add(self, row: Row, text: str) -> None:
        """Record `row`; when it has a target, check it, described by `text`."""
        self.rows.append(row)
        if row.passed is not None:
            self.check(row.passed, text)


def compare_report(
    original: Result, ours: Result, count: int, rules: Rules, print_line: Callable[[str], None]
) -> None:
    print_line(
        f"{'method':<10}{'variations':>11}{'wall s':>9}{'var/min':>9}{'CPU s/var':>11}"
        f"{'SSIM min':>10}{'SSIM max':>10}{'peak RSS MB':>13}"
    )
    for result in (original, ours):
        print_line(
            f"{result.name:<10}{count:>11}{result.wall_s:>9.2f}{60 * count / result.wall_s:>9.1f}"
            f"{result.cpu_s / count:>11.2f}{min(result.ssim):>10.4f}{max(result.ssim):>10.4f}"
            f"{result.peak_rss_kib / 1024:>13.0f}"
        )
    print_line(f"per variation SSIM, original: {' '.join(f'{s:.4f}' for s in original.ssim)}")
    print_line(f"per variation SSIM, ours:     {' '.join(f'{s:.4f}' for s in ours.ssim)}")
    ratio = original.wall_s / ours.wall_s
    rules.add(
        Row(
            "processing, subtle: variations per minute (measuring included)",
            "var/min",
            60 * count / ours.wall_s,
            60 * count / original.wall_s,
            at_least(TARGET_RATIO, on="ratio"),
        ),
        f"subtle: ours (measuring included) {ratio:.2f}x the original's variations per "
        f"minute, >= {TARGET_RATIO:.0f}x",
    )
    rules.add(
        Row(
            "processing, subtle: lowest whole-video SSIM",
            "SSIM",
            min(ours.ssim),
            min(original.ssim),
            at_least(1.0, on="ratio"),
        ),
        f"subtle: our lowest SSIM {min(ours.ssim):.4f} >= the original's lowest "
        f"{min(original.ssim):.4f} (FFmpeg ssim, whole video)",
    )


def _spread(values: Sequence[float | None], digits: int) -> str:
    present = [value for value in values if value is not None]
    if not present:
        return "-"
    low, middle, high = min(present), statistics.median(present), max(present)
    return f"{low:.{digits}f} / {middle:.{digits}f} / {high:.{digits}f}"


def strengths_report(
    runs: list[StrengthRun],
    count: int,
    rules: Rules,
    print_line: Callable[[str], None],
    original_rate: float | None = None,
    floor_cpu_s: float | None = None,
) -> None:
    """The table of each strength's figures; `original_rate` (the original's variations
    per minute, when measured) is the baseline of every strength's, `floor_cpu_s` (the
    encode-only floor's CPU seconds per variation) of every strength's CPU."""
    print_line(
        f"{'strength':<10}{'var/min':>9}{'s/var':>8}{'encode s/var':>14}{'measure s/var':>15}"
        f"{'measuring':>11}{'draws':>7}{'CPU s/var':>11}{'peak RSS MB':>13}"
    )
    for run in runs:
        total = run.timings.encode_s + run.timings.measure_s
        print_line(
            f"{run.strength.value:<10}{60 * count / run.result.wall_s:>9.1f}"
            f"{run.result.wall_s / count:>8.2f}{run.timings.encode_s / count:>14.2f}"
            f"{run.timings.measure_s / count:>15.2f}{100 * run.timings.measure_s / total:>10.1f}%"
            f"{sum(run.attempts.values()):>7}{run.result.cpu_s / count:>11.2f}"
            f"{run.result.peak_rss_kib / 1024:>13.0f}"
        )
    print_line("")
    print_line(
        "measures of the variations kept, min / median / max (each against its source's "
        "1-fps samples and all its siblings):"
    )
    print_line(
        f"{'strength':<10}{'pdqMedian':>22}{'pdqMatchedShare':>22}{'ssim':>26}"
        f"{'nearestSiblingPdq':>20}{'not matched':>13}{'matched pairs':>15}"
    )
    for run in runs:
        final = list(run.final().values())
        measured = [m for m in final if m is not None]
        unmatched = sum(1 for m in measured if not m.source_matched)
        pairs = run.matched_pairs()
        print_line(
            f"{run.strength.value:<10}"
            f"{_spread([m.pdq_median for m in measured], 1):>22}"
            f"{_spread([m.pdq_matched_share for m in measured], 2):>22}"
            f"{_spread([m.ssim for m in measured], 4):>26}"
            f"{_spread([m.nearest_sibling_pdq for m in measured], 1):>22}"
            f"{f'{unmatched}/{count}':>13}{len(pairs):>15}"
        )
        if pairs:
            every = len(pairs) == count * (count - 1) // 2
            print_line(
                f"  {run.strength.value}: matched to each other: "
                + ("every pair" if every else ", ".join(f"{a}~{b}" for a, b in pairs))
            )
        again = {index: tries for index, tries in sorted(run.attempts.items()) if tries > 1}
        if again:
            print_line(
                f"  {run.strength.value}: drawn again: "
                + ", ".join(f"variation {index} ({tries} tries)" for index, tries in again.items())
            )
        if run.unmeasured:
            print_line(f"  {run.strength.value}: {run.unmeasured} variations not measured")
    for run in runs:
        name = f"processing, {run.strength.value}"
        if run.strength != Strength.SUBTLE:  # subtle's is compared above
            rate = 60 * count / run.result.wall_s
            rules.add(
                Row(
                    f"{name}: variations per minute (measuring included)",
                    "var/min",
                    rate,
                    original_rate,
                    at_least(OTHER_STRENGTHS_RATIO, on="ratio") if original_rate else None,
                ),
                f"{run.strength.value}: ours {rate / (original_rate or 1):.2f}x the original's "
                f"variations per minute, >= {OTHER_STRENGTHS_RATIO:.0f}x",
            )
        rules.add(
            Row(
                f"{name}: CPU seconds per variation (FFmpeg and measuring)",
                "CPU s",
                run.result.cpu_s / count,
                floor_cpu_s,
                note="baseline: the encode-only floor (decode once, x264 as ours, nothing else)",
            ),
            "",
        )
        share = run.timings.measure_s / (run.timings.encode_s + run.timings.measure_s)
        rules.add(
            Row(f"{name}: measuring's share of the time", "%", 100 * share, None,
                at_most(100 * MAX_MEASURE_SHARE)),
            f"{run.strength.value}: measuring {100 * share:.1f} % of the time per variation, "
            f"<= {100 * MAX_MEASURE_SHARE:.0f} %",
        )  # fmt: skip
        final = list(run.final().values())
        unmatched = sum(1 for m in final if m is not None and not m.source_matched)
        minimum = MIN_UNMATCHED_SHARE.get(run.strength)
        if minimum is not None:
            needed = math.ceil(minimum * count - 1e-9)
            rules.add(
                Row(f"{name}: not matched to the source (of {count})", "variations",
                    unmatched, None, at_least(needed)),
                f"{run.strength.value}: {unmatched}/{count} not matched to the source, "
                f">= {needed}/{count}",
            )  # fmt: skip
        if run.strength in NO_SIBLING_MATCHES:
            matched = len(run.matched_pairs())
            rules.add(
                Row(f"{name}: pairs matched to each other", "pairs", matched, None, exactly(0)),
                f"{run.strength.value}: {matched} pairs matched to each other, none",
            )
