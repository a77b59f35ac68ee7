"""Fuzz: random values for every command's numeric flags and random mutations of a valid study spec.

Every input either runs or is refused with one line on stderr and exit status 2; never a traceback,
never a hang. Hypothesis draws a fixed (derandomized) sample so the file stays within its time budget
in CI; ``python tests/bad_inputs.py`` is the exhaustive pass over the same flags and edge values.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys

import pytest
import yaml

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import bad_inputs  # noqa: E402

#: the cheapest base command line of each command that takes numeric flags
COMMANDS = {c: bases[0] for c, bases in bad_inputs.BASES.items()}
FLAGS = [(c, flag, kind) for c in COMMANDS for flag, kind in bad_inputs.numeric_flags(c)
         if (c, flag) not in bad_inputs.LONG_BY_DESIGN]
SETTINGS = settings(max_examples=30, deadline=None, derandomize=True, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    return bad_inputs.make_fixtures(tmp_path_factory.mktemp("fuzz-fixtures"))


def _check(outcome: bad_inputs.Outcome) -> None:
    assert outcome.error is None, f"{outcome.argv}:\n{outcome.error}"
    assert outcome.ok, f"{outcome.argv}: exit {outcome.code}:\n{outcome.err}"


#: numbers a flag may be given: edge cases, then any integer or float at all (as text)
VALUES = st.one_of(
    st.sampled_from(bad_inputs.INT_VALUES + bad_inputs.FLOAT_VALUES),
    st.integers(min_value=-(2**80), max_value=2**80).filter(lambda v: abs(v) > 10**6 or v <= 0).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.sampled_from(["1e-5", "1E+3", "-0.0", "0x10", "1_000", " 7", "٣"]),
)


@SETTINGS
@given(case=st.sampled_from(FLAGS), value=VALUES)
def test_numeric_flags_run_or_are_one_line(case, value, files, tmp_path_factory):
    command, flag, _ = case
    work = tmp_path_factory.mktemp("fuzz")
    argv = [*bad_inputs.fill(COMMANDS[command], files, str(work / "out")), f"{flag}={value}"]
    _check(bad_inputs.run_cli(argv, work, timeout_s=60))


# ------------------------------------------------------------------------------- spec mutations

SPEC = {
    "name": "fuzz",
    "data": {"name": "digits"},
    "train": {"epochs": 1, "max_steps": 1, "batch_size": 64, "lr": 0.05},
    "models": ["mlp", {"name": "cnn", "kwargs": {"widths": [4, 8, 8]}, "label": "cnn-s"}],
    "methods": ["dense", {"name": "gmp", "kind": "global-magnitude", "targets": [{"sparsity": 0.5}]}],
    "protocols": [None],
    "seeds": 2,
    "measure": {"latency": False},
    "exclude": [{"method": "gmp", "seed": 1}],
}

LEAVES = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**80), max_value=2**80),
    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
    st.sampled_from([".", "..", "/proc/self", "a/b", "dense", "global-magnitude", "finetune", "mlp", "digits"]),
)
VALUES_TREE = st.recursive(LEAVES, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                           st.dictionaries(st.text(max_size=8), inner, max_size=3)),
                           max_leaves=8)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, (*prefix, k))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, (*prefix, i))


@st.composite
def mutated_specs(draw) -> str:
    spec = copy.deepcopy(SPEC)
    for _ in range(draw(st.integers(1, 3))):
        paths = [p for p in _paths(spec) if p]
        path = draw(st.sampled_from(paths))
        parent = spec
        for key in path[:-1]:
            parent = parent[key]
        action = draw(st.sampled_from(["replace", "delete", "add"]))
        if action == "delete":
            del parent[path[-1]]
        elif action == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=8))] = draw(VALUES_TREE)
        else:
            parent[path[-1]] = draw(VALUES_TREE)
    text = yaml.safe_dump(spec, sort_keys=False)
    if draw(st.booleans()):  # damage the text itself: a cut, an inserted character, a tab
        i = draw(st.integers(0, len(text)))
        text = text[:i] + draw(st.sampled_from(["", "\t", ":", "[", "{", "&a ", "*a", "!!python/name:os.system ",
                                                 "\x00", "- ", "\n  "])) + text[i:]
    return text


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
@given(text=mutated_specs())
def test_mutated_specs_validate_or_are_one_line(text, tmp_path_factory):
    work = tmp_path_factory.mktemp("spec")
    path = work / "spec.yaml"
    path.write_text(text, errors="surrogateescape")
    outcome = bad_inputs.run_cli(["study", "validate", str(path)], work, timeout_s=60)
    _check(outcome)
    assert list(work.iterdir()) == [path], "validation wrote files"


def test_the_unmutated_spec_is_valid(tmp_path):
    (tmp_path / "spec.yaml").write_text(yaml.safe_dump(SPEC, sort_keys=False))
    outcome = bad_inputs.run_cli(["study", "validate", str(tmp_path / "spec.yaml")], tmp_path)
    assert outcome.code == 0, outcome.err


# ------------------------------------------------------------------------------- real processes

@pytest.mark.parametrize("argv", [
    ["train", "cnn", "--data", "digits", "--seed", "1180591620717411303424", "--out", "o.pt"],
    ["train", "cnn", "--data", "digits", "--milestones", "nan", "--out", "o.pt"],
    ["info", "cnn", "--num-classes", "1000000000000"],
    ["bench", "cnn", "--input-size", "1x100000x100000"],
    ["study", "validate", "{bomb}"],
])
def test_edge_values_in_a_real_process(argv, tmp_path):
    """The installed entry point, in its own process: one line on stderr, exit 2, nothing on stdout."""
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(bad_inputs.hostile_specs()["alias-bomb"])
    argv = [a.replace("{bomb}", str(bomb)) for a in argv]
    code = "import sys; from prunelab.cli import main; sys.exit(main(sys.argv[1:]))"
    proc = subprocess.run([sys.executable, "-c", code, *argv], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stdout == ""
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bomb.yaml"]
