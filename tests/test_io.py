"""Atomic writes, safe loads and the CLI's error contract."""

from __future__ import annotations

import os
import pickle

import pytest
import torch

from prunelab.cli import main
from prunelab.errors import PrunelabError, check_choice, unknown_choice
from prunelab.io import (
    atomic_torch_save,
    atomic_write_json,
    load_checkpoint,
    save_checkpoint,
    torch_load,
)


def test_atomic_write_leaves_no_temp_file_on_failure(tmp_path):
    target = tmp_path / "out.json"
    with pytest.raises(TypeError):
        atomic_write_json(target, {"bad": object()})
    assert not target.exists()
    assert os.listdir(tmp_path) == []


def test_atomic_write_replaces_whole_file(tmp_path):
    target = tmp_path / "out.json"
    atomic_write_json(target, {"a": 1})
    atomic_write_json(target, {"a": torch.tensor(2)})
    assert target.read_text().strip().startswith("{")
    assert '"a": 2' in target.read_text()


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_written_files_get_the_mode_open_would_give(tmp_path, umask):
    """Atomic writes go through a private temporary file; the result must still follow the umask
    (0644 under 022), like a file written with open(), so other users and servers can read it."""
    import stat

    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "a.json", {"a": 1})
        save_checkpoint(tmp_path / "c.pt", arch={"family": "mlp", "kwargs": {}}, state_dict={})
        with open(tmp_path / "plain", "w") as fh:
            fh.write("x")
    finally:
        os.umask(old)
    want = stat.S_IMODE(os.stat(tmp_path / "plain").st_mode)
    assert want == 0o666 & ~umask
    for name in ("a.json", "c.pt"):
        assert stat.S_IMODE(os.stat(tmp_path / name).st_mode) == want, name


def test_checkpoint_round_trip(tmp_path):
    sd = {"w": torch.arange(6.0).reshape(2, 3)}
    path = save_checkpoint(tmp_path / "c.pt", arch={"family": "x", "kwargs": {"n": 1}}, state_dict=sd, meta={"k": 1})
    ck = load_checkpoint(path)
    assert torch.equal(ck["state_dict"]["w"], sd["w"])
    assert ck["arch"]["kwargs"] == {"n": 1} and ck["meta"] == {"k": 1}


def test_pickled_module_is_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save(torch.nn.Linear(2, 2), path)  # a pickled module: not weights-only
    with pytest.raises(PrunelabError, match="cannot be loaded safely|corrupt"):
        torch_load(path)


def test_corrupt_and_foreign_files_are_named(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(PrunelabError, match="bad.pt"):
        load_checkpoint(bad)
    other = tmp_path / "other.pt"
    atomic_torch_save({"weights": torch.zeros(1)}, other)
    with pytest.raises(PrunelabError, match="not a prunelab checkpoint"):
        load_checkpoint(other)
    with pytest.raises(PrunelabError, match="not found"):
        load_checkpoint(tmp_path / "missing.pt")
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(PrunelabError):
        load_checkpoint(raw)


def test_choice_errors_list_valid_names():
    err = unknown_choice("model", "nope", ["b", "a"])
    assert "nope" in str(err) and "a, b" in str(err)
    assert check_choice("x", "a", ["a"]) == "a"
    with pytest.raises(PrunelabError):
        check_choice("x", "z", ["a"])


def test_cli_unknown_command_is_one_line_exit_2(capsys):
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "frobnicate" in err and "train" in err


def test_cli_bad_flag_is_one_line_exit_2(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["info", "--no-such-flag"])
    assert exc.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_json_is_strict_nan_and_inf_become_null(tmp_path, capsys):
    """A diverged loss must not make a summary unreadable by strict JSON parsers."""
    import json

    from prunelab.cli.common import emit_json

    obj = {"loss": float("nan"), "acc": 0.5, "hist": [float("inf"), 1.0], "t": torch.tensor([1.0, float("nan")])}
    atomic_write_json(tmp_path / "s.json", obj)
    emit_json(obj)
    for text in ((tmp_path / "s.json").read_text(), capsys.readouterr().out):
        parsed = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
        assert parsed == {"loss": None, "acc": 0.5, "hist": [None, 1.0], "t": [1.0, None]}


def test_one_json_sanitiser_for_files_and_run_outputs(tmp_path):
    """:func:`prunelab.io.jsonable` is what files (``to_json``) and stored run outputs go through: NumPy
    arrays and scalars, tensors, paths and non-finite floats, each against its plain value by hand."""
    import json
    from pathlib import Path

    import numpy as np

    from prunelab.io import jsonable, to_json
    from prunelab.study.tasks import RunOutput

    obj = {"a": np.array([[1, 2], [3, 4]]), "b": np.float32(0.5), 3: torch.tensor([float("-inf"), 2.0]),
           "p": Path("x/y"), "t": (True, None, np.int64(7))}
    plain = {"a": [[1, 2], [3, 4]], "b": 0.5, "3": [None, 2.0], "p": "x/y", "t": [True, None, 7]}
    assert jsonable(obj) == plain and type(jsonable(obj)["t"][2]) is int
    assert json.loads(to_json(obj)) == plain
    assert RunOutput(metrics={"acc": np.float64(0.25), "loss": float("nan")}).to_dict()["metrics"] == \
        {"acc": 0.25, "loss": None}
    with pytest.raises(TypeError, match="not JSON serialisable: object"):
        jsonable({"x": object()})
