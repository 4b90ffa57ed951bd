"""Small HTML pieces of the report: tables, numbers, inline figures, the page, atomic writes."""

from __future__ import annotations

import base64
import contextlib
import html
import io
import math
import os
import tempfile
import textwrap
from collections.abc import Callable, Iterable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.text import Text

from sbc.errors import one_line

#: Figures are rendered at 1.5× their CSS size so they stay sharp on high-density screens.
PNG_DPI = 144
CSS_DPI = 96
#: Small figures (one or two panels) are scaled up to about this width in CSS pixels.
MIN_CSS_WIDTH = 480
MAX_UPSCALE = 1.75


def table(
    header: Sequence[str],
    rows: Iterable[Sequence[str]],
    numeric: Iterable[int] = (),
    classes: Sequence[str] | None = None,
    head_html: str | None = None,
    css: str = "",
) -> str:
    """A table from cells that are already HTML; header labels are escaped here."""
    num = set(numeric)
    ths = "".join(
        f'<th class="num">{e(h)}</th>' if i in num else f"<th>{e(h)}</th>"
        for i, h in enumerate(header)
    )
    head = head_html or f"<thead><tr>{ths}</tr></thead>"
    body = []
    for k, cells in enumerate(rows):
        cls = classes[k] if classes else ""
        tds = "".join(
            f'<td class="num">{c}</td>' if i in num else f"<td>{c}</td>"
            for i, c in enumerate(cells)
        )
        body.append(f'<tr class="{cls}">{tds}</tr>' if cls else f"<tr>{tds}</tr>")
    return (
        f'<div class="table-wrap"><table class="{css}">{head}'
        f"<tbody>{''.join(body)}</tbody></table></div>"
    )


def e(text: Any) -> str:
    return html.escape(str(text), quote=True)


def code(text: Any) -> str:
    return f"<code>{e(text)}</code>" if text not in (None, "") else "—"


def n_of(count: int, one: str, many: str) -> str:
    return f"{count} {one if count == 1 else many}"


def missing(x: Any) -> bool:
    return x is None or (np.isscalar(x) and bool(pd.isna(x)))


def p_value(x: Any) -> str:
    if missing(x):
        return "—"
    return f"{x:.3f}" if x >= 0.001 else f"{x:.1e}"


def general(x: Any) -> str:
    return "—" if missing(x) else f"{x:.3g}"


def ratio(x: Any) -> str:
    if missing(x):
        return "—"
    if math.isinf(x):
        return "−∞" if x < 0 else "∞"
    return f"{x:+.2f}".replace("-", "−")


def pct(x: Any) -> str:
    return "—" if missing(x) else f"{100 * x:.0f} %"


def coverage(est: Any, lo: Any, hi: Any) -> str:
    if missing(est):
        return "—"
    return f"{100 * est:.0f} % [{100 * lo:.0f}, {100 * hi:.0f}]"


def figure(title: str, make: Callable[[], Figure], caption: str, heading: bool = True) -> str:
    """A titled figure; a figure that cannot be drawn says why instead of sinking the report."""
    try:
        img = image(make(), title)
    except Exception as exc:  # shown on the page, never swallowed
        return f'<p class="notice">Could not draw {e(title)}: {e(one_line(exc))}</p>'
    head = f"<h3>{e(title)}</h3>\n" if heading else ""
    return f"{head}<figure>{img}<figcaption>{e(caption)}</figcaption></figure>"


def image(fig: Figure, alt: str) -> str:
    """An <img> with the figure inline as a base64 PNG, sized in CSS pixels; figures of one
    or two panels are shown (and rendered) larger so their text stays readable."""
    _wrap_suptitle(fig)
    natural = fig.get_figwidth() * CSS_DPI
    scale = min(MAX_UPSCALE, max(1.0, MIN_CSS_WIDTH / natural))
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=PNG_DPI * scale, bbox_inches="tight", facecolor="white")
    data = buf.getvalue()
    width = round(int.from_bytes(data[16:20], "big") * CSS_DPI / PNG_DPI)  # IHDR width
    b64 = base64.b64encode(data).decode("ascii")
    return f'<img src="data:image/png;base64,{b64}" width="{width}" alt="{e(alt)}">'


def _wrap_suptitle(fig: Figure) -> None:
    """Break a figure title that is wider than the figure (one or two panels) into lines,
    so the picture is not stretched to the width of its title."""
    title = fig.get_suptitle()
    texts = [t for t in fig.findobj(Text) if title and t.get_text() == title]
    if not texts:
        return
    text = texts[0]
    chars = int(fig.get_figwidth() * 72 / (0.55 * text.get_fontsize()))  # ≈ 0.55 em a glyph
    if len(title) > chars:
        text.set_text("\n".join(textwrap.wrap(title, max(chars, 20))))


def page(title: str, body: str) -> str:
    css = resources.files("sbc.reports").joinpath("style.css").read_text(encoding="utf-8")
    return (
        '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{e(title)}</title>\n<style>{css}</style>\n</head>\n"
        f"<body>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
    )


def write_atomically(path: Path, text: str) -> None:
    """Temp file in the same folder, fsync, rename: readers see the old page or the new one."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
