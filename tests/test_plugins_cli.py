"""``--plugin MODULE`` on info, prune, bench, export and train: a registered user family's checkpoint loads."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
import torch

from prunelab.cli import main

T = ["--epochs", "1", "--max-steps", "1", "--batch-size", "64", "--device", "cpu"]

PLUGIN = '''
from torch import nn
from prunelab.models import register_family


def build(in_channels=1, num_classes=10, width=8):
    return nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, num_classes))


register_family("{name}", build, input_shape=(1, 8, 8), doc="a user's family")
'''


def _plugin(tmp_path, monkeypatch, name: str) -> str:
    (tmp_path / f"{name}_plugin.py").write_text(textwrap.dedent(PLUGIN.format(name=name)))
    monkeypatch.syspath_prepend(str(tmp_path))
    return f"{name}_plugin"


def _checkpoint(tmp_path, family: str) -> str:
    from prunelab.io import save_checkpoint

    torch.manual_seed(0)
    from torch import nn

    width = 8
    model = nn.Sequential(nn.Conv2d(1, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10))
    path = tmp_path / "user.pt"
    save_checkpoint(path, arch={"family": family, "kwargs": {"width": width}}, state_dict=model.state_dict(),
                    meta={"input_shape": [1, 8, 8]})
    return str(path)


def test_every_model_command_loads_a_user_family_with_plugin(tmp_path, monkeypatch, capsys):
    module = _plugin(tmp_path, monkeypatch, "userfam_a")
    ckpt = _checkpoint(tmp_path, "userfam_a")
    # the family is unknown until the plugin is imported (a fresh process: nothing imported it yet)
    env_path = f"{tmp_path}:{':'.join(sys.path)}"
    proc = subprocess.run([sys.executable, "-m", "prunelab", "info", ckpt], capture_output=True, text=True,
                          env={"PYTHONPATH": env_path, "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 2 and "unknown model family 'userfam_a'" in proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr

    assert main(["info", ckpt, "--plugin", module, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["family"] == "userfam_a" and report["macs"] == 8 * 9 * 64 + 8 * 64 + 8 * 64 + 8 * 10
    out = tmp_path / "trained.pt"
    assert main(["train", ckpt, "--plugin", module, "--data", "digits", *T, "--out", str(out)]) == 0
    pruned = tmp_path / "pruned.pt"
    assert main(["prune", str(out), "--plugin", module, "--data", "digits", "--sparsity", "0.5", *T,
                 "--out", str(pruned)]) == 0
    assert main(["bench", str(pruned), "--plugin", module, "--batch-sizes", "1", "--repeats", "2", "--warmup", "1",
                 "--min-time", "0", "--quiet", "--json"]) == 0
    pytest.importorskip("onnxruntime")
    onnx_path = tmp_path / "user.onnx"
    assert main(["export", str(pruned), "--plugin", module, "--format", "onnx", "--out", str(onnx_path)]) == 0
    assert onnx_path.stat().st_size > 0


@pytest.mark.parametrize("argv", [
    ["info", "cnn"],
    ["bench", "cnn", "--batch-sizes", "1", "--quiet"],
    ["export", "cnn", "--format", "onnx", "--out", "{out}"],
    ["train", "cnn", "--data", "digits", *T, "--out", "{out}"],
    ["prune", "cnn", "--data", "digits", "--sparsity", "0.5", *T, "--out", "{out}"],
])
@pytest.mark.parametrize("plugin, words", [
    ("no_such_module_xyz", "plugin module 'no_such_module_xyz' cannot be imported"),
    ("broken_plugin_xyz", "plugin module 'broken_plugin_xyz' cannot be imported: ZeroDivisionError"),
])
def test_a_plugin_that_does_not_import_is_one_line(argv, plugin, words, tmp_path, monkeypatch, capsys):
    (tmp_path / "broken_plugin_xyz.py").write_text("1 / 0\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    out = tmp_path / "out.file"
    argv = [a.replace("{out}", str(out)) for a in argv]
    assert main([*argv, "--plugin", plugin]) == 2
    err = capsys.readouterr().err
    assert words in err and err.count("\n") == 1 and "Traceback" not in err
    assert not out.exists()


LORA_PLUGIN = '''
import torch
from torch import nn
from prunelab.models import register_family


class LoRALinear(nn.Linear):
    def __init__(self, n):
        super().__init__(n, n)
        self.a, self.b = nn.Parameter(torch.zeros(n, 2)), nn.Parameter(torch.zeros(2, n))

    def forward(self, x):
        return super().forward(x) + x @ self.a @ self.b


def build(in_features=16, num_classes=10):
    return nn.Sequential(nn.Flatten(), nn.Linear(in_features, 16), LoRALinear(16), nn.Linear(16, num_classes))


register_family("lorafam", build, input_shape=(16,), task="vector")
'''


def test_info_warns_when_a_user_model_is_miscounted(tmp_path, monkeypatch, capsys):
    from prunelab.io import save_checkpoint
    from prunelab.models import create

    (tmp_path / "lora_plugin.py").write_text(LORA_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    import lora_plugin  # noqa: F401

    path = tmp_path / "lora.pt"
    state = create({"family": "lorafam"}).state_dict()
    save_checkpoint(path, arch={"family": "lorafam", "kwargs": {}}, state_dict=state)
    assert main(["info", str(path), "--plugin", "lora_plugin"]) == 0
    err = capsys.readouterr().err
    # the LoRA products (16x2 + 2x16 per sample) are functional products inside a counted Linear
    assert "warning: MAC count" in err and "modules: 2: 256 vs 320" in err and err.count("\n") == 1
    assert main(["info", "cnn"]) == 0 and capsys.readouterr().err == ""
