"""A user's own Dataset / DataLoader: the streamed path gives the in-memory path's numbers on the same
samples and seeds, trains, prunes and fine-tunes through the API and through a data plugin."""

from __future__ import annotations

import sys
import textwrap

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

import prunelab.data as D
from prunelab.data.feed import EpochSampler
from prunelab.errors import PrunelabError
from prunelab.models import ArchSpec, create
from prunelab.train import TrainConfig, Trainer, evaluate, train


class Tensors(Dataset):
    """A plain map-style Dataset over tensors, as a user would write one."""

    def __init__(self, split) -> None:
        self.x, self.y = split.x, split.y

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], int(self.y[i])


@pytest.fixture(scope="module")
def mem():
    return D.load("synthetic", shape="3x8x8", n_train=203, n_val=40, n_test=48, seed=1)


def streamed(mem, **kw):
    return D.from_dataset(Tensors(mem.train), Tensors(mem.val), Tensors(mem.test), num_classes=mem.num_classes,
                          augment=mem.augment, **kw)


def fit(data, epochs=2, **cfg):
    torch.manual_seed(0)
    model = create("cnn", num_classes=10, in_channels=3)
    config = TrainConfig(epochs=epochs, batch_size=32, lr=0.05, device="cpu", **cfg)
    result = train(model, data, config)
    return model, result


def same_weights(a, b) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("workers", [0, 2])
def test_a_stream_of_the_same_samples_trains_to_the_same_numbers(mem, workers):
    data = streamed(mem, workers=workers)
    assert data.streamed and not mem.streamed and data.input_shape == mem.input_shape
    m_mem, r_mem = fit(mem)
    m_st, r_st = fit(data)
    assert same_weights(m_mem, m_st)  # same permutation, same batched crop/flip draws
    assert r_mem.history == [{**row, "time": r_mem.history[i]["time"]} for i, row in enumerate(r_st.history)]
    assert evaluate(m_st, data) == evaluate(m_mem, mem)


def test_a_dataloader_gives_its_dataset_and_workers_but_not_its_order(mem):
    loader = DataLoader(Tensors(mem.train), batch_size=7, shuffle=True, num_workers=0)
    data = D.from_dataset(loader, Tensors(mem.val), num_classes=10, augment=mem.augment)
    assert data.train.dataset is loader.dataset and len(data.test) == 0
    m_st, _ = fit(data, epochs=1)
    m_mem, _ = fit(D.DataBundle("m", mem.train, mem.val, data.test, 10, (3, 8, 8), augment=mem.augment), epochs=1)
    assert same_weights(m_mem, m_st)


def test_a_run_stopped_inside_an_epoch_of_a_stream_resumes_to_the_same_weights(mem, tmp_path):
    data = streamed(mem)
    whole, _ = fit(data)
    state = tmp_path / "state.pt"
    fit(data, max_steps=9, checkpoint=str(state))  # 7 steps per epoch: stops inside epoch 2
    resumed, _ = fit(data, checkpoint=str(state), resume=True)
    assert same_weights(whole, resumed)


def test_the_sampler_is_a_distributed_sampler_giving_each_rank_its_own_shard():
    ranks = [EpochSampler(103, seed=5, rank=r, world_size=2) for r in range(2)]
    assert all(isinstance(s, DistributedSampler) for s in ranks)
    for s in ranks:
        s.set_epoch(3)
    a, b = (list(s) for s in ranks)
    assert len(a) == len(b) == 51 and not set(a) & set(b)
    assert a != EpochSampler(103, seed=5, rank=0, world_size=2).order(4).tolist()  # set_epoch moves the order
    # both shards together are the first 102 positions of one permutation of the 103 samples
    perm = EpochSampler(103, seed=5).order(3).tolist()
    assert sorted(a + b) == sorted(perm[:102])


def test_fisher_accumulation_and_pfs_gates_read_a_stream_as_they_read_memory(mem):
    from prunelab.protocols.pfs import PFSConfig, learn_gates
    from prunelab.prune.structured import StructuredConfig, StructuredPruner, Target

    data = streamed(mem)
    ranked = []
    for d in (mem, data):
        torch.manual_seed(0)
        model = create("cnn", num_classes=10, in_channels=3)
        pruner = StructuredPruner(model, StructuredConfig(criterion="fisher", schedule="oneshot",
                                                          target=Target("channels", 60)), (3, 8, 8))
        pruner.prune_oneshot(d, batch_size=32, data_steps=3)
        ranked.append(pruner.masks.kept())
    assert ranked[0] == ranked[1]
    spec = ArchSpec("resnet_cifar", {"depth": 8, "in_channels": 3, "num_classes": 10})
    gates = [learn_gates(spec, d, PFSConfig(epochs=1, batch_size=32, holdout=0.2), TrainConfig(device="cpu"))[0]
             for d in (mem, data)]
    assert all(torch.equal(gates[0].gates[k], gates[1].gates[k]) for k in gates[0].gates)
    assert gates[0].history == gates[1].history


def test_a_users_dataset_trains_prunes_and_fine_tunes_through_the_api(mem):
    from prunelab.measure import count_params
    from prunelab.prune.unstructured import prune_global
    from prunelab.prune.unstructured.masks import MaskCallback

    data = streamed(mem)
    model, result = fit(data, epochs=2)
    assert result.final["test_acc"] > 0.3  # chance is 0.1
    prune_global(model, 0.8)
    assert count_params(model).nonzero < 0.3 * count_params(model).params
    tuned = Trainer(model, data, TrainConfig(epochs=1, batch_size=32, lr=0.01, device="cpu"),
                    callbacks=[MaskCallback()]).fit()
    assert tuned.final["test_acc"] is not None
    assert all(float((m.weight.detach() * (1 - m.weight_mask.float())).abs().sum()) == 0
               for m in model.modules() if hasattr(m, "weight_mask"))


def test_bad_user_datasets_are_one_line_errors(mem):
    class Wrong(Tensors):
        def __getitem__(self, i):
            return (self.x[i][:, :4] if i == 5 else self.x[i]), int(self.y[i])

    class Stream(IterableDataset):
        def __iter__(self):
            yield from ()

    with pytest.raises(PrunelabError, match="IterableDataset"):
        D.from_dataset(Stream(), num_classes=2)
    with pytest.raises(PrunelabError, match=r"train split returned label \d+, outside 0..1"):
        D.from_dataset(Tensors(mem.train), Tensors(mem.test), num_classes=2)
    with pytest.raises(PrunelabError, match=r"must return \(input, label\) pairs"):
        D.from_dataset([1, 2, 3], num_classes=2)
    data = D.from_dataset(Wrong(mem.train), num_classes=10)
    with pytest.raises(PrunelabError, match="samples of different shapes cannot form a batch"):
        fit(data, epochs=1)


PLUGIN = textwrap.dedent('''
    import torch
    from torch.utils.data import Dataset

    import prunelab.data as D


    class Blobs(Dataset):
        """Two Gaussian blobs as 1x8x8 images; ``bad`` returns 1x8x7 images from index 20 on."""

        def __init__(self, n, seed, bad=False):
            g = torch.Generator().manual_seed(seed)
            self.y = torch.randint(0, 2, (n,), generator=g)
            self.x = torch.randn(n, 1, 8, 8, generator=g) + 2.0 * self.y.view(-1, 1, 1, 1).float()
            self.bad = bad

        def __len__(self):
            return len(self.y)

        def __getitem__(self, i):
            x = self.x[i][:, :, :7] if self.bad and i >= 20 else self.x[i]
            return x, int(self.y[i])


    def load_blobs(root=None, *, val_fraction: float = 0.0, seed: int = 0, bad: bool = False):
        """Two blobs from a user's Dataset."""
        return D.from_dataset(Blobs(256, seed, bad), Blobs(64, seed + 1), Blobs(64, seed + 2, bad), num_classes=2,
                              name="blobs")


    D.register_dataset("blobs", load_blobs)
''')


def _cli(capsys, *args):
    from prunelab.cli import main

    capsys.readouterr()
    code = main(list(args))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_a_data_plugin_trains_prunes_and_fine_tunes_from_the_cli_and_validates_in_a_study(tmp_path, monkeypatch,
                                                                                          capsys):
    from prunelab.data import registry

    (tmp_path / "blobplug.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    # the plugin's registration is undone after the test, as the module's import
    monkeypatch.setattr(registry, "_DATASETS", dict(registry._DATASETS))
    monkeypatch.setitem(sys.modules, "blobplug", None)
    del sys.modules["blobplug"]
    out = tmp_path / "m.pt"
    code, stdout, err = _cli(capsys, "train", "cnn", "--plugin", "blobplug", "--data", "blobs", "--epochs", "2",
                             "--lr", "0.05", "--device", "cpu", "--out", str(out))
    assert code == 0, err
    assert "cnn on blobs: test acc" in stdout and out.is_file()
    pruned = tmp_path / "p.pt"
    code, _, err = _cli(capsys, "prune", str(out), "--plugin", "blobplug", "--data", "blobs", "--method", "global",
                        "--sparsity", "0.5", "--epochs", "1", "--lr", "0.01", "--device", "cpu", "--out", str(pruned))
    assert code == 0 and pruned.is_file(), err
    spec = tmp_path / "s.yaml"
    spec.write_text("name: s\nplugins: [blobplug]\ndata: {name: blobs, options: {bad: false}}\nmodels: [cnn]\n"
                    "methods: [dense]\ntrain: {epochs: 1}\n")
    code, _, err = _cli(capsys, "study", "validate", str(spec))
    assert code == 0, err
    # a plugin whose data set returns the wrong shapes: one line, exit 2, nothing written
    bad = tmp_path / "bad.pt"
    code, _, err = _cli(capsys, "train", "cnn", "--plugin", "blobplug", "--data", "blobs", "--data-option", "bad=true",
                        "--epochs", "1", "--device", "cpu", "--out", str(bad))
    assert code == 2 and not bad.exists()
    assert err.count("\n") == 1 and "samples of different shapes cannot form a batch" in err, err
    code, _, err = _cli(capsys, "train", "cnn", "--plugin", "no_such_plugin", "--data", "blobs", "--out", str(bad))
    assert code == 2 and err.count("\n") == 1 and "no_such_plugin" in err
