"""The one plain-text table renderer (explain, the run report, the cluster report): a header, a rule of
dashes, then the rows; the first column left-aligned, the others right-aligned, two spaces between."""

from __future__ import annotations

from collections.abc import Sequence


def text_table(header: Sequence[object], rows: Sequence[Sequence[object]]) -> list[str]:
    cells = [[str(c) for c in header], *([str(c) for c in row] for row in rows)]
    widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]

    def line(r: list[str]) -> str:
        return "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths)))

    return [line(cells[0]), line(["-" * w for w in widths]), *(line(r) for r in cells[1:])]


def number_cell(value: float | None, fmt: str = ".4g") -> str:
    """A number in a table or report line; "-" for none."""
    return "-" if value is None else format(value, fmt)


def percent_cell(value: float | None) -> str:
    """A relative error (0.05) as a signed percentage (+5.0%); "-" for none."""
    return "-" if value is None else f"{100 * value:+.1f}%"
