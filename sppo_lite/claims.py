"""claim(condition, statement, **numbers): a notebook's sentence, checked by the run in front of the reader.

    claim(avg < 0.1 * start, "the average iterate ends below a tenth of its start", avg=avg, start=start)

prints `✓ the average iterate ends below a tenth of its start (avg=0.0031, start=0.129)` when the run
shows it, and raises ClaimFailed with the statement and the numbers when it does not, so a notebook
whose text drifts from its numbers fails (in CI's SMOKE run as in the full one).

SPPO_LITE_CLAIMS=report (for surveying a notebook across seeds, `benchmarks/notebook_seeds.py`; never in
CI) prints `✗ statement (numbers)` for a claim the run does not show and goes on, so one run lists them all.
"""
from __future__ import annotations

import math
import os
from numbers import Number

__all__ = ["ClaimFailed", "claim", "format_numbers"]


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
    if not bool(condition):
        if os.environ.get("SPPO_LITE_CLAIMS") == "report":
            print(f"✗ {statement}{suffix}")
            return False
        raise ClaimFailed(f"the run does not show: {statement}{suffix}")
    print(f"✓ {statement}{suffix}")
    return True
