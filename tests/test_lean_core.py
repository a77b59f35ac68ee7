"""The core install: with every extra hidden, prunelab still imports, trains, prunes and counts, and a
command that needs an extra says which one in one line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

# What the extras install (and what they pull in): none of it may be needed by the core.
HIDDEN = ("sklearn", "scipy", "mnist1d", "matplotlib", "pandas", "PIL", "onnx", "onnxruntime", "onnxscript", "ray",
          "tensorboard", "mlflow", "transformers", "requests")

SCRIPT = textwrap.dedent('''
    import io, json, sys, contextlib
    HIDDEN = set(sys.argv[1].split(","))
    for name in HIDDEN:  # as if not installed: import raises ModuleNotFoundError, importlib.util.find_spec -> None
        sys.modules[name] = None
    import torch
    torch.set_num_threads(1)
    import prunelab, prunelab.checkpoint, prunelab.cli, prunelab.data as D, prunelab.export, prunelab.measure
    import prunelab.models, prunelab.protocols, prunelab.prune.structured, prunelab.prune.unstructured
    import prunelab.study, prunelab.track, prunelab.train
    from prunelab.measure import count_macs, count_params
    from prunelab.models import create
    from prunelab.prune.structured import StructuredConfig, StructuredPruner, Target
    from prunelab.prune.unstructured import prune_global
    from prunelab.train import TrainConfig, train

    out = {}
    data = D.load("synthetic", shape="1x8x8", n_train=256, n_val=32, n_test=64)
    model = create("cnn", num_classes=10)
    out["acc"] = train(model, data, TrainConfig(epochs=2, batch_size=32, lr=0.05, device="cpu")).final["test_acc"]
    full = count_params(model)
    prune_global(model, 0.5)
    out["kept"] = count_params(model).nonzero / full.params
    out["macs"] = [count_macs(model, (1, 8, 8)), count_macs(model, (1, 8, 8), sparse=True)]
    dense = create("cnn", num_classes=10)
    pruner = StructuredPruner(dense, StructuredConfig(criterion="l1", schedule="oneshot",
                                                      target=Target("channels", 60)), (1, 8, 8))
    pruner.prune_oneshot()
    out["channels"] = sum(w["after"] for w in pruner.widths())
    out["compressed_params"] = count_params(pruner.compress()).params
    errors = {}
    for name, argv in {"digits": ["train", "cnn", "--data", "digits", "--out", sys.argv[2] + "/x.pt"],
                       "folder": ["train", "cnn", "--data", "imagefolder-stream", "--data-root", sys.argv[2],
                                  "--out", sys.argv[2] + "/z.pt"],
                       "tracker": ["train", "cnn", "--data", "synthetic", "--tracker", "tensorboard",
                                   "--out", sys.argv[2] + "/w.pt"],
                       "report": ["report", sys.argv[2]],
                       "results": ["results", sys.argv[2]]}.items():
        err = io.StringIO()
        with contextlib.redirect_stderr(err):
            code = prunelab.cli.main(argv)
        errors[name] = [code, err.getvalue()]
    out["errors"] = errors
    out["loaded"] = sorted({m.split(".")[0] for m, mod in sys.modules.items() if mod is not None} & HIDDEN)
    print(json.dumps(out))
''')


def test_the_core_trains_prunes_and_counts_with_every_extra_hidden(tmp_path):
    (tmp_path / "train" / "a").mkdir(parents=True)
    (tmp_path / "val").mkdir()
    r = subprocess.run([sys.executable, "-c", SCRIPT, ",".join(HIDDEN), str(tmp_path)], capture_output=True,
                       text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert out["loaded"] == []
    assert out["acc"] > 0.2  # chance is 0.1
    assert abs(out["kept"] - 0.5) < 0.02 and out["macs"][1] < out["macs"][0]
    assert out["channels"] == 60 and out["compressed_params"] < 24_170
    expected = {
        "digits": "prunelab train: error: digits needs scikit-learn: pip install 'prunelab[data]'\n",
        "folder": "prunelab train: error: imagefolder-stream needs Pillow: pip install 'prunelab[images]'\n",
        "tracker": "prunelab train: error: --tracker tensorboard needs tensorboard: pip install "
                   "'prunelab[tensorboard]'\n",
        "report": "prunelab report: error: the report needs pandas: pip install 'prunelab[report]'\n",
        "results": "prunelab results: error: prunelab results needs pandas: pip install 'prunelab[report]'\n",
    }
    assert {k: v[1] for k, v in out["errors"].items()} == expected
    assert all(code == 2 for code, _ in out["errors"].values())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train", "val"]  # nothing written
