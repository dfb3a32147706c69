"""claim(condition, statement, **numbers): a notebook's sentence, checked by the run in front of the reader.

    claim(avg < 0.1 * start, "the average iterate ends below a tenth of its start", avg=avg, start=start)

prints `✓ the average iterate ends below a tenth of its start (avg=0.0031, start=0.129)` when the run
shows it, and raises ClaimFailed with the statement and the numbers when it does not, so a notebook
whose text drifts from its numbers fails (in CI's SMOKE run as in the full one).

SPPO_LITE_CLAIMS=report (for surveying a notebook across seeds, `benchmarks/notebook_seeds.py`; never in
CI) prints `✗ statement (numbers)` for a claim the run does not show and goes on, so one run lists them all.

one_line_per_cell() (in a notebook's set-up cell): the claims of a cell are still checked one by one, and a
failed one still stops the notebook with its numbers, but a cell whose checks all hold prints one line,
`✓ 3 checks hold: statement; statement; ...`, instead of one per claim (not in report mode, which lists each).
"""
from __future__ import annotations

import math
import os
from numbers import Number

__all__ = ["ClaimFailed", "claim", "format_numbers", "one_line_per_cell", "flush"]

_held: list[str] | None = None   # statements of the running cell, while one_line_per_cell is on
_SUMMARY_CHARS = 200


class ClaimFailed(AssertionError):
    """The run does not show what the notebook says."""


def _format(value) -> str:
    if isinstance(value, bool) or not isinstance(value, Number):
        return repr(value) if isinstance(value, str) else str(value)
    value = float(value)
    if value == 0 or not math.isfinite(value):
        return f"{value:g}"
    if abs(value) >= 1e4 or abs(value) < 1e-3:
        return f"{value:.3g}"
    if float(value).is_integer():
        return str(int(value))
    return f"{value:.4g}"


def format_numbers(numbers: dict) -> str:
    """'a=0.0031, b=0.129' for the numbers behind a claim (arrays print as lists)."""
    parts = []
    for name, value in numbers.items():
        if hasattr(value, "tolist"):
            value = value.tolist()
        if isinstance(value, (list, tuple)):
            shown = "[" + ", ".join(_format(v) for v in value) + "]"
        else:
            shown = _format(value)
        parts.append(f"{name}={shown}")
    return ", ".join(parts)


def claim(condition, statement: str, **numbers) -> bool:
    """Check one sentence of the text against the run: print ✓ with its numbers, or raise ClaimFailed."""
    shown = format_numbers(numbers)
    suffix = f" ({shown})" if shown else ""
    report = os.environ.get("SPPO_LITE_CLAIMS") == "report"
    if not bool(condition):
        if report:
            print(f"✗ {statement}{suffix}")
            return False
        raise ClaimFailed(f"the run does not show: {statement}{suffix}")
    if _held is not None and not report:
        _held.append(statement)
    else:
        print(f"✓ {statement}{suffix}")
    return True


def summary_line(statements) -> str:
    """'✓ 3 checks hold: a; b; c' (shortened to about 200 characters), or '' for none."""
    if not statements:
        return ""
    head = f"✓ {len(statements)} check{'s' if len(statements) > 1 else ''} hold{'' if len(statements) > 1 else 's'}: "
    body = "; ".join(statements)
    if len(head) + len(body) > _SUMMARY_CHARS:
        body = body[: _SUMMARY_CHARS - len(head) - 1].rsplit(" ", 1)[0] + " …"
    return head + body


def flush() -> None:
    """Print the held claims of this cell as one summary line (one_line_per_cell does this after each cell)."""
    global _held
    if _held:
        print(summary_line(_held))
    if _held is not None:
        _held = []


def one_line_per_cell() -> bool:
    """From now on, each notebook cell's passing claims print as one summary line at the cell's end.

    Uses IPython's post_run_cell event; outside IPython (a script) claims keep printing one line each.
    Returns whether it is on.
    """
    global _held
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    shell = get_ipython()
    if shell is None:
        return False
    if _held is None:
        _held = []
        shell.events.register("post_run_cell", lambda *_: flush())
    return True
