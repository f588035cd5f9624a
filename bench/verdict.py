"""One benchmark figure against its baseline and target, and the table of all of them.

Every benchmark module returns `Row`s; `python -m bench` (what `bench/run` runs) prints
them as one table and writes them as JSON, a list of
`{name, value, baseline, ratio, target, pass}`, so that runs can be compared.
"""

from __future__ import annotations

import json
import operator
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

_COMPARE: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    "<": operator.lt,
    ">": operator.gt,
    "=": operator.eq,
}


@dataclass(frozen=True)
class Target:
    """A rule on a figure: `on` is "value" (the figure itself) or "ratio" (the figure
    over its baseline, measured in the same run)."""

    on: str
    compare: str
    limit: float

    def __str__(self) -> str:
        return f"{self.on} {self.compare} {self.limit:g}"

    def holds(self, value: float, ratio: float | None) -> bool:
        subject = value if self.on == "value" else ratio
        return subject is not None and _COMPARE[self.compare](subject, self.limit)


def at_least(limit: float, *, on: str = "value") -> Target:
    return Target(on, ">=", limit)


def at_most(limit: float, *, on: str = "value") -> Target:
    return Target(on, "<=", limit)


def below(limit: float, *, on: str = "value") -> Target:
    return Target(on, "<", limit)


def exactly(limit: float) -> Target:
    return Target("value", "=", limit)


@dataclass(frozen=True)
class Row:
    """One figure. `baseline` is the same thing measured in the same run by the simplest
    thing that could do it (a raw server, the original's method, the idle service), or
    None where there is none; a row without a target is reported, not judged."""

    name: str
    unit: str
    value: float
    baseline: float | None = None
    target: Target | None = None
    # What an operator should know when reading it (how it was measured, a caveat).
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or self.baseline == 0:
            return None
        return self.value / self.baseline

    @property
    def passed(self) -> bool | None:
        return None if self.target is None else self.target.holds(self.value, self.ratio)

    def as_json(self) -> dict[str, object]:
        return {
            "name": f"{self.name} ({self.unit})",
            "value": _rounded(self.value),
            "baseline": None if self.baseline is None else _rounded(self.baseline),
            "ratio": None if self.ratio is None else round(self.ratio, 3),
            "target": None if self.target is None else str(self.target),
            "pass": self.passed,
        }


def _rounded(number: float) -> float:
    return round(number, 4) if abs(number) < 10 else round(number, 1)


def _shown(number: float | None) -> str:
    if number is None:
        return "-"
    if number == int(number) and abs(number) < 1e6:
        return str(int(number))
    return f"{number:.3f}" if abs(number) < 10 else f"{number:.1f}"


def table(rows: Iterable[Row]) -> list[str]:
    """The rows as aligned text lines, a header first."""
    header = ("benchmark", "value", "baseline", "ratio", "target", "result")
    cells = [header]
    for row in rows:
        verdict = {None: "report", True: "PASS", False: "FAIL"}[row.passed]
        cells.append(
            (
                f"{row.name} ({row.unit})",
                _shown(row.value),
                _shown(row.baseline),
                "-" if row.ratio is None else f"{row.ratio:.2f}",
                "-" if row.target is None else str(row.target),
                verdict,
            )
        )
    widths = [max(len(line[column]) for line in cells) for column in range(len(header))]
    lines = []
    for line in cells:
        first = line[0].ljust(widths[0])
        rest = [cell.rjust(width) for cell, width in zip(line[1:], widths[1:], strict=True)]
        lines.append("  ".join([first, *rest]))
    return lines


def write_json(rows: Iterable[Row], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps([row.as_json() for row in rows], indent=2) + "\n")
