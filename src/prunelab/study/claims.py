"""Claims: the seed papers' statements as hypotheses a study tests, with a paired interval and a verdict.

A study spec may list ``claims``::

    claims:
      - name: reduced-vs-pruned
        paper: Crowley et al. 2018
        statement: reduced networks are at least as accurate as pruned-and-fine-tuned ones of equal size
        a: {method: reduced-width}                  # the arm the statement is about
        b: {method: fisher, protocol: finetune}     # what it is compared with
        targets: [{params_ratio: [0.15, 0.3, 0.5]}] # where the arms are paired (default: every target both ran)
        metric: acc                                 # acc, loss, params, macs, latency_ms, latency_ms_b<N>
        test: noninferiority                        # noninferiority | equivalence | superiority
        margin: 0.5                                 # in the difference's unit (accuracy: points)

**The difference.** For each seed ``s`` and each of the claim's targets ``t``, ``d(s, t)`` is how much
better arm A's run is than arm B's run of the same model, target and seed, which started from the same
dense checkpoint (a study trains one dense model per seed and every method of that seed starts from it).
"Better" follows the metric: for accuracy ``d = 100 (acc_A - acc_B)`` in points; for a cost (latency,
MACs, parameters), where lower is better, the relative saving ``d = 100 (cost_B - cost_A) / cost_B`` in
percent of B (``relative: false`` gives the plain difference ``cost_B - cost_A`` instead). The seed's
difference ``d(s)`` is the mean of ``d(s, t)`` over the targets; only seeds with every target done for
both arms count.

**The interval.** A two-sided 95% Student t interval over the ``n`` seeds:
``mean(d) +/- t(0.975, n - 1) * sd(d) / sqrt(n)`` with the sample standard deviation. The seeds are
the independent replicates (targets within a seed share a dense model, so they are averaged, not
counted as replicates). With the three seeds of a typical study a bootstrap interval is not honest: a
percentile bootstrap of three numbers can only take 10 distinct means and never reaches past the
smallest and largest difference, so it covers far less than 95%. The t interval with 2 degrees of
freedom (t = 4.30) is wide, and says so.

**The verdict** (margin ``m >= 0``; an interval ``[lo, hi]``):

* ``noninferiority`` ("A is at least as good as B", allowing ``m``): *held* when ``lo > -m``,
  *contradicted* when ``hi < -m``;
* ``equivalence`` ("A is within ``m`` of B"): *held* when ``-m < lo`` and ``hi < m``, *contradicted*
  when the interval lies wholly outside ``(-m, m)``;
* ``superiority`` ("A is better than B by more than ``m``"): *held* when ``lo > m``, *contradicted* when
  ``hi < m``;
* otherwise *inconclusive*: an interval that reaches past the margin is never held, however the means
  compare (an equivalence interval wider than its band ``2m`` can never be held); fewer than two
  paired seeds give no interval and are inconclusive too.

Claims change no run, so they are kept out of the spec hash: the runner records them in the store, and
editing a claim needs no ``--update``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from prunelab.errors import PrunelabError, unknown_choice
from prunelab.study.targets import check_target, target_label

CLAIM_KEYS = ("name", "paper", "statement", "a", "b", "model", "targets", "metric", "test", "margin", "relative")
ARM_KEYS = ("method", "protocol")
TESTS = {
    "noninferiority": "at least as good as",
    "equivalence": "within the margin of",
    "superiority": "better than",
}
VERDICTS = ("held", "contradicted", "inconclusive")
CONFIDENCE = 0.95


# ---------------------------------------------------------------- Student t quantiles


def t_cdf_two_sided(t: float, df: int) -> float:
    """P(|T| <= t) for Student's t with ``df`` (integer >= 1) degrees of freedom: the finite series of
    Abramowitz & Stegun (1964), 26.7.3 (odd df) and 26.7.4 (even df), in theta = atan(t / sqrt(df))."""
    if df < 1:
        raise PrunelabError(f"degrees of freedom must be >= 1, got {df}")
    t = abs(float(t))
    theta = math.atan(t / math.sqrt(df))
    c2 = math.cos(theta) ** 2
    s = math.sin(theta)
    if df % 2 == 1:
        total, term = 0.0, math.cos(theta)
        if df > 1:
            total = term
            for k in range(3, df - 1, 2):  # term_k = term_{k-2} * (k-1)/k * cos^2
                term *= (k - 1) / k * c2
                total += term
        return min(1.0, 2.0 / math.pi * (theta + s * total)) if df > 1 else 2.0 * theta / math.pi
    total, term = 1.0, 1.0
    for k in range(2, df - 1, 2):  # term_k = term_{k-2} * (k-1)/k * cos^2
        term *= (k - 1) / k * c2
        total += term
    return min(1.0, s * total)


def t_quantile(probability: float, df: int) -> float:
    """The ``probability`` quantile (> 0.5) of Student's t with ``df`` degrees of freedom, by bisection
    on :func:`t_cdf_two_sided` (``t_quantile(0.975, 2)`` = 4.303)."""
    if not 0.5 < probability < 1.0:
        raise PrunelabError(f"quantile probability must lie in (0.5, 1), got {probability}")
    coverage = 2.0 * probability - 1.0
    lo, hi = 0.0, 1.0
    while t_cdf_two_sided(hi, df) < coverage:
        hi *= 2.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if t_cdf_two_sided(mid, df) < coverage:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-12 * max(1.0, hi):
            break
    return 0.5 * (lo + hi)


# ---------------------------------------------------------------- metrics a claim can compare


@dataclass(frozen=True)
class ClaimMetric:
    """A run measure a claim compares: how to read it from a ``runs`` row (SQL over the table alias
    ``{t}``), whether higher is better, and how a difference is expressed."""

    name: str
    sql: str
    higher_is_better: bool
    relative: bool  # default difference: percent of arm B (True) or plain difference x scale (False)
    scale: float = 1.0
    unit: str = ""
    doc: str = ""


_METRICS: dict[str, ClaimMetric] = {}
_BATCH_LATENCY = re.compile(r"^latency_ms_b([1-9][0-9]*)$")


def register_claim_metric(metric: ClaimMetric) -> None:
    """Make ``metric`` available to claims (``metric: <name>``)."""
    _METRICS[metric.name] = metric


register_claim_metric(ClaimMetric("acc", "{t}.acc", True, False, 100.0, "points", "test top-1 accuracy"))
register_claim_metric(ClaimMetric("loss", "{t}.loss", False, False, 1.0, "", "test cross-entropy"))
register_claim_metric(ClaimMetric("params", "{t}.params", False, True, 1.0, "", "remaining parameters"))
register_claim_metric(ClaimMetric("macs", "{t}.macs", False, True, 1.0, "", "MACs at batch 1"))
register_claim_metric(ClaimMetric("latency_ms", "{t}.latency_ms", False, True, 1.0, "ms",
                                  "measured latency at the study's first batch size"))


def claim_metric(name: str) -> ClaimMetric:
    """The registered metric ``name``, or the measured latency at batch N for ``latency_ms_b<N>``."""
    if name in _METRICS:
        return _METRICS[name]
    m = _BATCH_LATENCY.match(str(name))
    if m:
        return ClaimMetric(name, f"json_extract({{t}}.metrics, '$.{name}')", False, True, 1.0, "ms",
                           f"measured latency at batch {m.group(1)}")
    raise unknown_choice("claim metric", name, [*_METRICS, "latency_ms_b<N>"])


def difference_unit(metric: ClaimMetric, relative: bool) -> str:
    """How a difference of ``metric`` is written: ``points``, ``% of B``, ``ms``..."""
    return "% of B" if relative else metric.unit


# ---------------------------------------------------------------- the spec entries


@dataclass(frozen=True)
class Arm:
    """One side of a claim: a method of the study and its protocol (``None``: the method's runs take none)."""

    method: str
    protocol: str | None = None

    @property
    def label(self) -> str:
        return self.method if self.protocol is None else f"{self.method} / {self.protocol}"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "protocol": self.protocol}


@dataclass(frozen=True)
class Claim:
    """A checked claim: its arms, the model and targets where they are paired, metric, test and margin."""

    name: str
    paper: str
    statement: str
    a: Arm
    b: Arm
    model: str
    targets: tuple[str, ...]  # target labels, as the store's ``target`` column
    metric: str
    test: str
    margin: float
    relative: bool

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "paper": self.paper, "statement": self.statement, "a": self.a.to_dict(),
                "b": self.b.to_dict(), "model": self.model, "targets": list(self.targets), "metric": self.metric,
                "test": self.test, "margin": self.margin, "relative": self.relative}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Claim:
        return cls(str(d["name"]), str(d.get("paper") or ""), str(d.get("statement") or ""), Arm(**d["a"]),
                   Arm(**d["b"]), str(d["model"]), tuple(d["targets"]), str(d["metric"]), str(d["test"]),
                   float(d["margin"]), bool(d["relative"]))


@dataclass
class ClaimEntry:
    """A claim as parsed, before it is checked against the study's runs (arms may omit a protocol,
    model and targets may be left to the runs)."""

    name: str
    paper: str
    statement: str
    a: dict[str, Any]
    b: dict[str, Any]
    model: str | None
    targets: list[dict | None] | None
    metric: str
    test: str
    margin: float
    relative: bool
    node: Any = field(default=None, repr=False, compare=False)


#: ``error(node, key, message) -> PrunelabError``: how the spec parser points at a line
ErrorAt = Callable[[Any, Any, str], PrunelabError]

_UNSET = object()


def parse_claims(items: Any, node: Any, error: ErrorAt) -> list[ClaimEntry]:
    """Parse a spec's ``claims`` list (``node`` is the mapping holding it, for error lines)."""
    if items is None:
        return []
    if not isinstance(items, list):
        raise error(node, "claims", "'claims' must be a list of mappings like {name, paper, a: {method}, "
                                    "b: {method}, metric, test, margin}")
    out: list[ClaimEntry] = []
    for item in items:
        if not isinstance(item, dict):
            raise error(node, "claims", f"a claim is a mapping with keys {', '.join(CLAIM_KEYS)}; got {item!r}")
        unknown = [k for k in item if k not in CLAIM_KEYS]
        if unknown:
            raise error(item, unknown[0], f"unknown claim key {unknown[0]!r}; valid keys: {', '.join(CLAIM_KEYS)}")
        for key in ("name", "a", "b", "test", "margin"):
            if key not in item:
                raise error(item, None, f"a claim needs {key!r} (keys: {', '.join(CLAIM_KEYS)})")
        name = item["name"]
        if not isinstance(name, str) or not name.strip():
            raise error(item, "name", f"claim name must be a non-empty string, got {name!r}")
        if any(c.name == name for c in out):
            raise error(item, "name", f"claim name {name!r} is used twice")
        for key in ("paper", "statement", "model"):
            if item.get(key) is not None and not isinstance(item[key], str):
                raise error(item, key, f"claim {name!r}: {key!r} must be a string, got {item[key]!r}")
        arms = {side: _parse_arm(item, side, name, error) for side in ("a", "b")}
        metric = item.get("metric", "acc")
        try:
            spec_metric = claim_metric(metric)
        except PrunelabError as exc:
            raise error(item, "metric", f"claim {name!r}: {exc}") from None
        test = item["test"]
        if test not in TESTS:
            raise error(item, "test", f"claim {name!r}: {unknown_choice('claim test', test, TESTS)}")
        margin = item["margin"]
        if isinstance(margin, bool) or not isinstance(margin, int | float) or not math.isfinite(margin) \
                or margin < 0 or (margin == 0 and test != "superiority"):
            need = ">= 0" if test == "superiority" else "> 0 (a non-inferiority or equivalence margin)"
            raise error(item, "margin", f"claim {name!r}: margin must be a number {need}, got {margin!r}")
        relative = item.get("relative", spec_metric.relative)
        if not isinstance(relative, bool):
            raise error(item, "relative", f"claim {name!r}: relative must be true or false, got {relative!r}")
        targets = None
        if item.get("targets") is not None:
            targets = _parse_claim_targets(item, name, error)
        out.append(ClaimEntry(name.strip(), str(item.get("paper") or ""), " ".join(str(item.get("statement") or
                                                                                       "").split()),
                              arms["a"], arms["b"], item.get("model"), targets, str(metric), test, float(margin),
                              relative, node=item))
    return out


def _parse_arm(item: dict, side: str, name: str, error: ErrorAt) -> dict[str, Any]:
    arm = item[side]
    if isinstance(arm, str):
        arm = {"method": arm}
    if not isinstance(arm, dict) or not isinstance(arm.get("method"), str):
        raise error(item, side, f"claim {name!r}: arm {side!r} must be a mapping like {{method: fisher, protocol: "
                                f"finetune}}, got {arm!r}")
    unknown = [k for k in arm if k not in ARM_KEYS]
    if unknown:
        raise error(item, side, f"claim {name!r}: unknown arm key {unknown[0]!r}; valid keys: {', '.join(ARM_KEYS)}")
    protocol = arm.get("protocol", _UNSET)
    if protocol == "none":
        protocol = None
    if protocol is not _UNSET and protocol is not None and not isinstance(protocol, str):
        raise error(item, side, f"claim {name!r}: arm {side!r} protocol must be a name, got {protocol!r}")
    return {"method": arm["method"], "protocol": protocol}


def _parse_claim_targets(item: dict, name: str, error: ErrorAt) -> list[dict | None]:
    out: list[dict | None] = []
    values = item["targets"] if isinstance(item["targets"], list) else [item["targets"]]
    for value in values:
        if value is None or value == "none":
            out.append(None)
            continue
        if isinstance(value, dict) and len(value) == 1 and isinstance(next(iter(value.values())), list):
            (key, vs), = value.items()
            expanded = [{key: v} for v in vs]
        else:
            expanded = [value]
        for t in expanded:
            try:
                out.append(check_target(dict(t) if isinstance(t, dict) else t))
            except PrunelabError as exc:
                raise error(item, "targets", f"claim {name!r}: {exc}") from None
    return out


def check_claims(entries: list[ClaimEntry], runs: Iterable[Any], measure: dict[str, Any],
                 error: ErrorAt) -> list[Claim]:
    """Check each claim against the study's expanded runs and resolve it: both arms' methods exist, a
    protocol is named where a method runs several, the claim's targets are run by both arms on its
    model, at least two seeds are shared (to pair), and the metric is measured."""
    runs = list(runs)
    methods: dict[str, set[str | None]] = {}
    for run in runs:
        methods.setdefault(run.method, set()).add(run.protocol)
    out: list[Claim] = []
    for entry in entries:
        node = entry.node

        def fail(key: Any, message: str, _node: Any = node, _name: str = entry.name) -> PrunelabError:
            return error(_node, key, f"claim {_name!r}: {message}")

        arms: dict[str, Arm] = {}
        for side in ("a", "b"):
            method, protocol = entry.a["method"] if side == "a" else entry.b["method"], \
                (entry.a if side == "a" else entry.b)["protocol"]
            if method not in methods:
                raise fail(side, str(unknown_choice(f"arm {side} method", method, methods)))
            ran = methods[method]
            if protocol is _UNSET:
                if len(ran) != 1:
                    raise fail(side, f"method {method!r} runs protocols {_names(ran)}: name one with "
                                     f"{{method: {method}, protocol: ...}}")
                protocol = next(iter(ran))
            elif protocol not in ran:
                raise fail(side, str(unknown_choice(f"protocol of method {method!r}", protocol,
                                                    [p if p is not None else "none" for p in ran])))
            arms[side] = Arm(method, protocol)
        if arms["a"] == arms["b"]:
            raise fail("b", f"both arms are {arms['a'].label}: a claim compares two different arms")
        mine = {side: [r for r in runs if r.method == arm.method and r.protocol == arm.protocol]
                for side, arm in arms.items()}
        models = [m for m in dict.fromkeys(r.model_label for r in mine["a"])
                  if any(r.model_label == m for r in mine["b"])]
        if entry.model is not None:
            if entry.model not in models:
                raise fail("model", f"model {entry.model!r} does not run both arms; models that do: "
                                    f"{', '.join(models) or 'none'}")
            model = entry.model
        elif len(models) == 1:
            model = models[0]
        elif not models:
            raise fail(None, f"no model runs both {arms['a'].label} and {arms['b'].label}")
        else:
            raise fail(None, f"models {', '.join(models)} run both arms: name one with 'model:'")
        ran_targets = {side: {target_label(r.target) for r in rs if r.model_label == model}
                       for side, rs in mine.items()}
        if entry.targets is None:
            targets = [t for t in dict.fromkeys(target_label(r.target) for r in mine["a"] if r.model_label == model)
                       if t in ran_targets["b"]]
            if not targets:
                raise fail(None, f"{arms['a'].label} and {arms['b'].label} share no target on model {model!r}")
        else:
            targets = list(dict.fromkeys(target_label(t) for t in entry.targets))
            for t in targets:
                for side in ("a", "b"):
                    if t not in ran_targets[side]:
                        raise fail("targets", f"arm {side} ({arms[side].label}) has no run at target {t} on model "
                                              f"{model!r}; its targets: {', '.join(sorted(ran_targets[side]))}")
        seeds = {side: {r.seed for r in rs if r.model_label == model and target_label(r.target) in targets}
                 for side, rs in mine.items()}
        shared = seeds["a"] & seeds["b"]
        if len(shared) < 2:
            raise fail(None, f"the arms share {len(shared)} seed(s) at its targets; pairing over seeds needs at "
                             f"least 2 (3 or more for a useful interval)")
        _check_measured(entry.metric, measure, fail)
        out.append(Claim(entry.name, entry.paper, entry.statement, arms["a"], arms["b"], model, tuple(targets),
                         entry.metric, entry.test, entry.margin, entry.relative))
    return out


def _names(protocols: Iterable[str | None]) -> str:
    return ", ".join(sorted(p if p is not None else "none" for p in protocols))


def _check_measured(metric: str, measure: dict[str, Any], fail: Callable[[Any, str], PrunelabError]) -> None:
    if not metric.startswith("latency_ms"):
        return
    if not measure.get("latency"):
        raise fail("metric", f"metric {metric} needs measured latency: add measure: {{latency: true}} to the study")
    m = _BATCH_LATENCY.match(metric)
    sizes = [int(b) for b in (measure.get("batch_sizes") or [1])]
    if m and int(m.group(1)) not in sizes:
        raise fail("metric", f"metric {metric} is not measured; the study times batch sizes "
                             f"{', '.join(str(b) for b in sizes)} (metrics latency_ms_b<N>)")


# ---------------------------------------------------------------- evaluation


@dataclass
class Interval:
    """Mean difference over ``n`` paired seeds with its 95% t interval (``None`` bounds below 2 seeds)."""

    n: int
    mean: float | None
    sd: float | None
    lo: float | None
    hi: float | None
    t: float | None

    @classmethod
    def of(cls, values: list[float]) -> Interval:
        n = len(values)
        if n == 0:
            return cls(0, None, None, None, None, None)
        mean = sum(values) / n
        if n < 2:
            return cls(n, mean, None, None, None, None)
        sd = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
        t = t_quantile(0.5 + CONFIDENCE / 2, n - 1)
        half = t * sd / math.sqrt(n)
        return cls(n, mean, sd, mean - half, mean + half, t)


@dataclass
class ClaimResult:
    """A claim evaluated on the store: per-seed differences, the interval, the verdict and why."""

    claim: Claim
    unit: str
    seeds: list[int]
    differences: list[float]
    interval: Interval
    verdict: str
    reason: str
    per_target: list[tuple[str, Interval]] = field(default_factory=list)
    identical: bool = False  # two methods whose paired runs all have the same mask fingerprint


def decide(test: str, margin: float, interval: Interval) -> tuple[str, str]:
    """The verdict of one claim and the reason (see the module doc for the rule)."""
    lo, hi, m = interval.lo, interval.hi, margin
    if lo is None or hi is None:
        return "inconclusive", f"{interval.n} paired seed(s): no interval"
    if test == "noninferiority":
        if lo > -m:
            return "held", f"the whole interval lies above -{m:g}"
        if hi < -m:
            return "contradicted", f"the whole interval lies below -{m:g}"
        return "inconclusive", f"the interval straddles -{m:g}"
    if test == "equivalence":
        if -m < lo and hi < m:
            return "held", f"the whole interval lies inside (-{m:g}, {m:g})"
        if lo >= m or hi <= -m:
            return "contradicted", f"the whole interval lies outside (-{m:g}, {m:g})"
        return "inconclusive", f"the interval reaches past ±{m:g}"
    if test == "superiority":
        if lo > m:
            return "held", f"the whole interval lies above {m:g}"
        if hi < m:
            return "contradicted", f"the whole interval lies below {m:g}"
        return "inconclusive", f"the interval straddles {m:g}"
    raise unknown_choice("claim test", test, TESTS)


def paired_rows(store, claim: Claim) -> list[tuple[str, int, float | None, float | None, str | None, str | None]]:
    """``(target, seed, metric of A, metric of B, mask hash of A, mask hash of B)`` for every done pair of
    runs of the claim's arms on its model at the same target and seed (SQL on the store)."""
    metric = claim_metric(claim.metric)
    ea, eb = metric.sql.format(t="a"), metric.sql.format(t="b")
    return store.query(
        f"SELECT a.target, a.seed, {ea}, {eb}, json_extract(a.metrics, '$.mask_hash'), "
        f"json_extract(b.metrics, '$.mask_hash') FROM runs a JOIN runs b "
        f"ON b.model = a.model AND b.target = a.target AND b.seed = a.seed "
        f"WHERE a.active = 1 AND b.active = 1 AND a.status = 'done' AND b.status = 'done' AND a.model = ? "
        f"AND a.method = ? AND a.protocol IS ? AND b.method = ? AND b.protocol IS ? ORDER BY a.seed, a.target",
        (claim.model, claim.a.method, claim.a.protocol, claim.b.method, claim.b.protocol))


def advantage(claim: Claim, value_a: float, value_b: float) -> float | None:
    """How much better A is than B in the claim's unit (see the module doc); None when undefined."""
    metric = claim_metric(claim.metric)
    sign = 1.0 if metric.higher_is_better else -1.0
    if claim.relative:
        if value_b == 0:
            return None
        return 100.0 * sign * (value_a - value_b) / abs(value_b)
    return metric.scale * sign * (value_a - value_b)


def evaluate_claim(store, claim: Claim) -> ClaimResult:
    """Evaluate one claim from the store's done runs (see the module doc)."""
    by_seed: dict[int, dict[str, float]] = {}
    hashes: list[bool] = []
    for target, seed, va, vb, ha, hb in paired_rows(store, claim):
        if target not in claim.targets or va is None or vb is None:
            continue
        d = advantage(claim, float(va), float(vb))
        if d is None:
            continue
        by_seed.setdefault(int(seed), {})[target] = d
        hashes.append(ha is not None and ha == hb and claim.a.method != claim.b.method)
    complete = {s: ds for s, ds in by_seed.items() if set(ds) == set(claim.targets)}
    seeds = sorted(complete)
    diffs = [sum(complete[s].values()) / len(claim.targets) for s in seeds]
    interval = Interval.of(diffs)
    verdict, reason = decide(claim.test, claim.margin, interval)
    per_target = [(t, Interval.of([complete[s][t] for s in seeds])) for t in claim.targets]
    metric = claim_metric(claim.metric)
    return ClaimResult(claim, difference_unit(metric, claim.relative), seeds, diffs, interval, verdict, reason,
                       per_target, identical=bool(hashes) and all(hashes))


def evaluate_claims(store, claims: Iterable[Claim | dict]) -> list[ClaimResult]:
    """Every claim (as recorded in the store's ``claims``) evaluated on its done runs."""
    return [evaluate_claim(store, c if isinstance(c, Claim) else Claim.from_dict(c)) for c in claims]
