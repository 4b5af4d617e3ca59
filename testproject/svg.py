"""Latency histograms side by side as one inline SVG, rendered on the server (no JavaScript).

The x axis is logarithmic (a 3 ms body and a 500 ms tail both need room) and shared by all panels,
as is the y axis (calls per bin), so the panels compare at a glance. Every non-empty bar carries its
count: a tail of 15 calls out of 300 is a thin bar, but it is the point of the picture.
"""

import dataclasses
import math
from collections.abc import Sequence

from django.utils.html import format_html
from django.utils.safestring import SafeString, mark_safe

WIDTH, HEIGHT, GAP = 440, 270, 24
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 56, 34  # TOP: the title and a line per mark above the plot
TICKS_MS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000)
LABELLED_MS = {1: "1 ms", 10: "10 ms", 100: "100 ms", 1000: "1 s"}


@dataclasses.dataclass(frozen=True)
class Histogram:
    title: str
    latencies_ms: Sequence[float]
    marks: Sequence[tuple[str, float]]  # vertical lines: (label, ms), e.g. ("p99", 501.2)
    colour: str = "#4f81bd"


@dataclasses.dataclass(frozen=True)
class _Axis:
    low_ms: float
    high_ms: float
    bins: int

    @property
    def width(self) -> float:
        return WIDTH - LEFT - RIGHT

    def share(self, ms: float) -> float:
        """Where ``ms`` lies on the axis: 0 at ``low_ms`` (and below), 1 at ``high_ms`` (and above)."""
        return min(1.0, math.log(max(ms, self.low_ms) / self.low_ms) / math.log(self.high_ms / self.low_ms))

    def x(self, ms: float) -> float:
        return LEFT + self.width * self.share(ms)

    def bin(self, ms: float) -> int:
        return min(self.bins - 1, int(self.share(ms) * self.bins))

    def counts(self, latencies_ms: Sequence[float]) -> list[int]:
        counts = [0] * self.bins
        for value in latencies_ms:
            counts[self.bin(value)] += 1
        return counts


def histograms(
    panels: Sequence[Histogram], *, low_ms: float = 1.0, high_ms: float = 2000.0, bins: int = 22
) -> SafeString:
    """One SVG with a histogram per panel, left to right (values outside the range go to the end bins)."""
    axis = _Axis(low_ms, high_ms, bins)
    counts = [axis.counts(panel.latencies_ms) for panel in panels]
    tallest = max((max(c) for c in counts if c), default=0) or 1
    total_width = len(panels) * WIDTH + (len(panels) - 1) * GAP
    parts = [
        format_html(
            '<svg xmlns="http://www.w3.org/2000/svg" width="{}" height="{}" viewBox="0 0 {} {}" role="img" '
            'font-family="system-ui, sans-serif" font-size="10"><title>{}</title>',
            total_width,
            HEIGHT,
            total_width,
            HEIGHT,
            " versus ".join(panel.title for panel in panels),
        )
    ]
    for index, (panel, panel_counts) in enumerate(zip(panels, counts, strict=True)):
        parts.append(format_html('<g transform="translate({},0)">', index * (WIDTH + GAP)))
        parts.extend(_panel(axis, panel, panel_counts, tallest))
        parts.append(mark_safe("</g>"))
    parts.append(mark_safe("</svg>"))
    return mark_safe("".join(parts))  # every part was escaped by format_html


def _panel(axis: _Axis, panel: Histogram, counts: list[int], tallest: int) -> list[SafeString]:
    # From the top: the title, a band for the marks' labels, the plot (its tallest bar leaves room
    # for its count), the x axis labels.
    bottom = HEIGHT - BOTTOM
    bar_top = TOP + 12
    middle = _f((TOP + bottom) / 2)
    parts = [
        format_html('<text x="{}" y="14" font-size="12" font-weight="bold">{}</text>', LEFT, panel.title),
        format_html(
            '<text x="{}" y="{}" text-anchor="middle">latency (log scale)</text>', _f(LEFT + axis.width / 2), HEIGHT - 4
        ),
        format_html(
            '<text x="12" y="{}" transform="rotate(-90 12 {})" text-anchor="middle">calls</text>', middle, middle
        ),
        format_html('<text x="{}" y="{}" text-anchor="end">{}</text>', LEFT - 4, bar_top + 4, tallest),
        format_html('<text x="{}" y="{}" text-anchor="end">0</text>', LEFT - 4, bottom),
    ]
    for tick in TICKS_MS:
        tick_x = _f(axis.x(tick))
        parts.append(
            format_html('<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#e4e4e4"/>', tick_x, TOP, tick_x, bottom)
        )
        if tick in LABELLED_MS:
            parts.append(
                format_html(
                    '<text x="{}" y="{}" text-anchor="middle">{}</text>', tick_x, bottom + 14, LABELLED_MS[tick]
                )
            )
    bin_width = axis.width / axis.bins
    for number, count in enumerate(counts):
        if not count:
            continue
        bar = max(1.0, (bottom - bar_top) * count / tallest)
        x = LEFT + number * bin_width
        parts.append(
            format_html(
                '<rect x="{}" y="{}" width="{}" height="{}" fill="{}"/>',
                _f(x + 0.5),
                _f(bottom - bar),
                _f(bin_width - 1),
                _f(bar),
                panel.colour,
            )
        )
        parts.append(
            format_html(
                '<text x="{}" y="{}" text-anchor="middle" font-size="9">{}</text>',
                _f(x + bin_width / 2),
                _f(bottom - bar - 3),
                count,
            )
        )
    parts.append(
        format_html('<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#444"/>', LEFT, bottom, WIDTH - RIGHT, bottom)
    )
    for row, (label, value) in enumerate(panel.marks):
        x = axis.x(value)
        label_y = 30 + 12 * row  # one line per mark, so close marks cannot overwrite each other
        anchor = "end" if x > LEFT + axis.width * 0.6 else "start"
        parts.append(
            format_html(
                '<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#222" stroke-dasharray="4 3"/>',
                _f(x),
                label_y - 8,
                _f(x),
                bottom,
            )
        )
        parts.append(
            format_html(
                '<text x="{}" y="{}" text-anchor="{}">{} {} ms</text>',
                _f(x + (-3 if anchor == "end" else 3)),
                label_y,
                anchor,
                label,
                _ms(value),
            )
        )
    return parts


def _ms(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.1f}"


def _f(value: float) -> str:
    return f"{value:.1f}"
