"""A table's declarative checks (``checks:`` in its targets file), judged on per-seed results.

Each check compares rows through the difference of their mean errors, with a 95 % Welch
t-interval over the seeds. A claim *holds* only when the interval says so, *fails* when the
interval says the opposite, and is *not shown* otherwise (or with fewer than 2 seeds per row):

- ``worse: [a, b]``   holds when the whole interval of a − b is above 0, fails when below 0;
- ``worst: a, among`` holds when ``worse: [a, x]`` holds for every x, fails when one fails;
- ``within: [a, b], points: p``  holds when the interval of a − b lies inside [−p, p], fails when
  it lies wholly outside.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from .targets import Check

LEVEL = 0.95


@dataclass(frozen=True)
class Difference:
    a: str
    b: str
    mean: float
    low: float
    high: float
    n_a: int
    n_b: int

    def text(self) -> str:
        ci = "" if math.isnan(self.low) else f" [{self.low:+.2f}, {self.high:+.2f}]"
        return f"{self.a} − {self.b} = {self.mean:+.2f}{ci} (n = {self.n_a}, {self.n_b})"


@dataclass(frozen=True)
class Verdict:
    check: Check
    verdict: str               # holds | fails | not shown
    detail: str


def difference(a: str, b: str, values: dict[str, list[float]]) -> Difference | None:
    """Mean of a minus mean of b with its Welch t-interval; None when a row has no result."""
    from scipy import stats

    xa, xb = values.get(a) or [], values.get(b) or []
    if not xa or not xb:
        return None
    ma, mb = sum(xa) / len(xa), sum(xb) / len(xb)
    if len(xa) < 2 or len(xb) < 2:
        return Difference(a, b, ma - mb, math.nan, math.nan, len(xa), len(xb))
    va = sum((x - ma) ** 2 for x in xa) / (len(xa) - 1) / len(xa)
    vb = sum((x - mb) ** 2 for x in xb) / (len(xb) - 1) / len(xb)
    se = math.sqrt(va + vb)
    if se == 0:
        return Difference(a, b, ma - mb, ma - mb, ma - mb, len(xa), len(xb))
    dof = (va + vb) ** 2 / ((va ** 2 / (len(xa) - 1)) + (vb ** 2 / (len(xb) - 1)))
    half = float(stats.t.ppf(0.5 + LEVEL / 2, dof)) * se
    return Difference(a, b, ma - mb, ma - mb - half, ma - mb + half, len(xa), len(xb))


def _worse(d: Difference) -> str:
    if math.isnan(d.low):
        return "not shown"
    return "holds" if d.low > 0 else "fails" if d.high < 0 else "not shown"


def judge(check: Check, values: dict[str, list[float]]) -> Verdict:
    a, others = check.rows[0], check.rows[1:]
    diffs = [difference(a, b, values) for b in others]
    if any(d is None for d in diffs):
        missing = [r for r in check.rows if not values.get(r)]
        return Verdict(check, "not shown", f"no results for {', '.join(missing)}")
    detail = "; ".join(d.text() for d in diffs)
    if check.kind == "within":
        d, p = diffs[0], check.points
        if math.isnan(d.low):
            return Verdict(check, "not shown", detail + f"; within ±{p:g} needs 2 seeds per row")
        verdict = ("holds" if -p <= d.low and d.high <= p else
                   "fails" if d.low > p or d.high < -p else "not shown")
        return Verdict(check, verdict, detail + f"; allowed ±{p:g}")
    verdicts = [_worse(d) for d in diffs]
    verdict = "fails" if "fails" in verdicts else "holds" if all(v == "holds" for v in verdicts) else "not shown"
    return Verdict(check, verdict, detail)


def judge_all(checks, values: dict[str, list[float]]) -> list[Verdict]:
    return [judge(c, values) for c in checks]
