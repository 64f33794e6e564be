"""Declarative table checks: Welch intervals computed by hand, and each verdict reachable."""
from __future__ import annotations

import math

import pytest

from bnnrepro.errors import TargetsError
from bnnrepro.report import checks, targets
from bnnrepro.report.targets import Check


def test_difference_is_the_welch_interval_by_hand():
    # a = (3, 5): mean 4, var 2; b = (1, 2, 3): mean 2, var 1; se^2 = 2/2 + 1/3 = 4/3
    d = checks.difference("a", "b", {"a": [3.0, 5.0], "b": [1.0, 2.0, 3.0]})
    se2 = 1.0 + 1.0 / 3.0
    dof = se2 ** 2 / ((1.0 ** 2) / 1 + ((1.0 / 3.0) ** 2) / 2)
    from scipy import stats

    half = stats.t.ppf(0.975, dof) * math.sqrt(se2)
    assert d.mean == pytest.approx(2.0)
    assert (d.low, d.high) == (pytest.approx(2.0 - half), pytest.approx(2.0 + half))


@pytest.mark.parametrize("values, verdict", [
    ({"a": [3.0, 3.1, 3.2], "b": [1.0, 1.1, 1.2]}, "holds"),       # clearly worse
    ({"a": [1.0, 1.1, 1.2], "b": [3.0, 3.1, 3.2]}, "fails"),       # clearly better
    ({"a": [1.0, 3.0], "b": [2.0, 2.1]}, "not shown"),             # the interval spans 0
    ({"a": [3.0], "b": [1.0]}, "not shown"),                       # one seed: no interval
    ({"a": [3.0, 3.1]}, "not shown"),                              # a row without results
])
def test_worse_verdicts(values, verdict):
    assert checks.judge(Check("a is worse", "worse", ("a", "b")), values).verdict == verdict


def test_within_and_worst():
    close = {"a": [2.0, 2.1, 2.2], "b": [2.05, 2.1, 2.15]}
    far = {"a": [5.0, 5.1, 5.2], "b": [2.0, 2.1, 2.2]}
    assert checks.judge(Check("c", "within", ("a", "b"), 0.5), close).verdict == "holds"
    assert checks.judge(Check("c", "within", ("a", "b"), 0.5), far).verdict == "fails"
    both = {"a": [5.0, 5.1, 5.2], "b": [2.0, 2.1, 2.2], "c": [3.0, 3.1, 3.2]}
    assert checks.judge(Check("w", "worst", ("a", "b", "c")), both).verdict == "holds"
    assert checks.judge(Check("w", "worst", ("b", "a", "c")), both).verdict == "fails"


def test_bad_checks_are_rejected_naming_the_check():
    raw = {"paper": "x", "title": "t", "tables": [{
        "id": "t1", "title": "t", "metric": "test_error", "unit": "percent", "source": "s", "columns": ["m"],
        "rows": [{"id": "a", "labels": {"m": "a"}, "overrides": ["+paper=bnn"]}],
        "checks": [{"claim": "c", "worse": ["a", "nosuch"]}]}]}
    with pytest.raises(TargetsError, match="check 1: unknown row"):
        targets.parse(raw)
    raw["tables"][0]["checks"] = [{"claim": "c", "worse": ["a", "a"], "within": ["a", "a"]}]
    with pytest.raises(TargetsError, match="exactly one of worse, worst, within"):
        targets.parse(raw)
