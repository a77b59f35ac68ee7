"""The transformer recipes run end to end through the study runner, shrunk to a few steps: every
method (Global MP+MT, head/width Fisher and L1, reduced, scratch, copied profile, PFS) on the zoo's
ViT (digits) and LM (the pydoc_data corpus, next-token loss)."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


def shrink(path: Path, out: Path, data_options: dict | None = None) -> Path:
    """The recipe with 2 training steps, one seed, one target per run and (for the corpus) a short text."""
    doc = yaml.safe_load(path.read_text())
    doc["train"].update(epochs=1, max_steps=2)
    doc["seeds"] = [0]
    if data_options:
        doc["data"].setdefault("options", {}).update(data_options)
    for m in doc["methods"]:
        if isinstance(m, dict):
            for key in ("finetune_epochs", "gate_epochs"):
                if key in m:
                    m[key] = 1
            if "finetune" in m:
                m["finetune"] = {**m["finetune"], "epochs": 1}
            if "channels_per_prune" in m:  # a few large pruning steps instead of many small ones
                m.update(prune_every=1, channels_per_prune=24)
    for run in doc["runs"]:
        run["targets"] = [{k: v[-1:] for k, v in t.items()} for t in run["targets"]]
    out.write_text(yaml.safe_dump(doc, sort_keys=False))
    return out


@pytest.mark.parametrize("recipe, options", [
    ("transformers_vit_small.yaml", None),
    ("transformers_lm_small.yaml", {"max_tokens": 6000, "seq_len": 16}),
])
def test_a_tiny_version_of_the_recipe_runs_every_method(recipe, options, tmp_path):
    from prunelab.study import load_results, run_study

    spec = shrink(RECIPES / recipe, tmp_path / recipe, options)
    result = run_study(spec, tmp_path / "study", progress=False)
    assert result.counts["failed"] == 0, result.failures
    df = load_results(tmp_path / "study")
    assert (df["status"] == "done").all()
    methods = set(df["method"])
    assert {"dense", "global-mp+mt", "fisher", "reduced-width", "reduced-bottleneck", "pfs"} <= methods
    dense = df[df["method"] == "dense"].iloc[0]
    assert (df[df["method"] != "dense"]["params"] < dense["params"]).all()  # every method removed something
    fisher = df[df["method"] == "fisher"].set_index("protocol")
    assert {"finetune", "scratch-e"} <= set(fisher.index)
    # the pruned architecture and its scratch-trained copy are one network, at the 0.7 params target (tol 0.1)
    assert fisher.loc["finetune", "params"] == fisher.loc["scratch-e", "params"]
    assert abs(fisher.loc["finetune", "params"] / dense["params"] - 0.7) <= 0.1 * 0.7
    if "lm" in recipe:
        assert dense["num_classes"] == 256 and dense["input_shape"] == "16"  # bytes, 16-token blocks
