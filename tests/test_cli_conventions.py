"""Command-line conventions shared by every command.

Abbreviated flags are refused; ``--help`` shows defaults; old flag spellings still work with a note;
commands say what they wrote; a structured prune that misses its target exits 2 and writes nothing
unless ``--allow-miss`` is given.
"""

from __future__ import annotations

import pytest

from prunelab.cli import COMMANDS, build_parser, main

FAST = ["--data", "digits", "--epochs", "1", "--batch-size", "128", "--device", "cpu", "--quiet"]


def test_abbreviated_flags_are_refused(tmp_path, capsys):
    rc = None
    with pytest.raises(SystemExit) as exc:
        rc = main(["train", "mlp", "--data", "digits", "--epoch", "1", "--out", str(tmp_path / "m.pt")])
    assert rc is None and exc.value.code == 2
    err = capsys.readouterr().err
    assert "unrecognized arguments: --epoch 1" in err
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_parser_refuses_abbreviations(command):
    parser = build_parser(command)
    stack = [parser]
    while stack:
        p = stack.pop()
        assert p.allow_abbrev is False, command
        for action in p._actions:
            if hasattr(action, "choices") and isinstance(action.choices, dict):
                stack.extend(action.choices.values())


def test_help_shows_training_defaults(capsys):
    with pytest.raises(SystemExit):
        main(["prune", "--help"])
    entries, current = {}, None
    for line in capsys.readouterr().out.splitlines():
        if line.startswith("  -"):  # an option's first line; its help continues on the indented lines below
            current = line.split("  ", 2)[1].strip()
            entries[current] = line
        elif current is not None and line.startswith("      "):
            entries[current] += " " + line.strip()
        else:
            current = None
    for flag, default in (("--epochs EPOCHS", "10"), ("--lr LR", "0.1"), ("--batch-size BATCH_SIZE", "128"),
                          ("--prune-schedule {oneshot,gradual,iterative}", "oneshot")):
        entry = next(text for name, text in entries.items() if name.startswith(flag))
        assert f"default: {default}" in " ".join(entry.split()), (flag, entry)


def test_old_spelling_works_with_a_note(tmp_path, capsys):
    out = tmp_path / "red"
    rc = main(["reduce", "--model", "cnn", *FAST, "--max-steps", "1", "--params", "12000", "--tol", "0.2",
               "--out", str(out)])
    assert rc == 0
    err = capsys.readouterr().err
    assert "prunelab: note: --params is deprecated; use --target-params" in err
    assert f"prunelab reduce: wrote {out / 'model.pt'}, {out / 'summary.json'}" in err


def test_prune_says_what_it_wrote(tmp_path, capsys):
    out = tmp_path / "p.pt"
    assert main(["prune", "mlp", *FAST, "--max-steps", "1", "--sparsity", "0.5", "--out", str(out)]) == 0
    assert f"prunelab prune: wrote {out}, {out.with_suffix('.json')}" in capsys.readouterr().err


def test_missed_structured_target_exits_2_and_writes_nothing(tmp_path, capsys):
    out = tmp_path / "s.pt"
    argv = ["prune", "cnn", "--structured", *FAST, "--max-steps", "2", "--pretrain-epochs", "0",
            "--prune-every", "1", "--target-channels", "20", "--checkpoint-every-prunes", "1", "--out", str(out)]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "error: target 20 channels not reached" in err and "--allow-miss" in err
    errors = [line for line in err.splitlines() if "error:" in line]  # beside the coverage lines
    assert len(errors) == 1 and err.strip().endswith(errors[0])
    assert not list(tmp_path.iterdir())  # neither the model, its summary nor the every-prune checkpoints

    assert main([*argv, "--allow-miss"]) == 0
    err = capsys.readouterr().err
    assert "warning: target 20 channels not reached" in err
    assert out.exists() and out.with_suffix(".json").exists()
