"""Outputs: what is not a regular file is never replaced, nothing is half-written, a full disk is one line.

Every file prunelab writes goes through :func:`prunelab.io.atomic_write`. These tests use real special
files (devices, a FIFO, a socket, symlinks) but never hand a device itself to code that could replace
it: devices are reached through symlinks in ``tmp_path``, or the command's work is stubbed out so that
even a failing check cannot touch them, and every test confirms the devices are still devices. A full
disk is simulated by fault injection (ENOSPC, torch's own ``RuntimeError``, SQLite's page limit) and,
where the kernel lets an unprivileged user mount a small tmpfs, by a real full file system.
"""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

import prunelab
from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.io import (
    atomic_torch_save,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_text,
    check_writable,
    save_checkpoint,
)
from prunelab.models import create, resolve

LINUX = sys.platform.startswith("linux")
SRC = Path(prunelab.__file__).resolve().parents[1]  # the sources under test, for subprocesses
TRAIN = ["--epochs", "1", "--max-steps", "1"]
DEVICES = ("/dev/null", "/dev/full")
pytestmark = pytest.mark.skipif(not LINUX or not all(Path(d).exists() for d in DEVICES),
                                reason="needs Linux special files (/dev/null, /dev/full, FIFOs)")


@pytest.fixture(autouse=True)
def _devices_stay_devices():
    yield
    for dev in DEVICES:
        assert stat.S_ISCHR(os.lstat(dev).st_mode), f"{dev} is no longer a character device"


def _state(path: Path) -> tuple:
    """What must not change at a refused target: its type, its link text, its content if a file."""
    st = os.lstat(path)
    link = os.readlink(path) if stat.S_ISLNK(st.st_mode) else None
    return stat.S_IFMT(st.st_mode), st.st_ino, link


def _specials(folder: Path) -> dict[str, Path]:
    """Every kind of non-regular target, made in ``folder``; devices only through symlinks."""
    folder.mkdir(parents=True, exist_ok=True)
    made = {}
    for name, target in (("link-null", "/dev/null"), ("link-full", "/dev/full"), ("dangling", "missing.json")):
        os.symlink(target, folder / name)
        made[name] = folder / name
    os.mkfifo(folder / "fifo")
    made["fifo"] = folder / "fifo"
    (folder / "dir").mkdir()
    made["dir"] = folder / "dir"
    os.symlink("dir", folder / "link-dir")
    made["link-dir"] = folder / "link-dir"
    os.symlink("loop-b", folder / "loop-a")
    os.symlink("loop-a", folder / "loop-b")
    made["loop"] = folder / "loop-a"
    sock_path = folder / "sock"
    if len(os.fsencode(sock_path)) < 100:  # AF_UNIX path limit
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(sock_path))
        sock.close()  # the socket file stays
        made["socket"] = sock_path
    return made


WORDS = {"link-null": "symlink to /dev/null, a character device",
         "link-full": "symlink to /dev/full, a character device", "dangling": "does not exist",
         "fifo": "named pipe", "dir": "folder", "link-dir": "a folder", "loop": "cannot be followed",
         "socket": "a socket"}

WRITERS = {
    "json": lambda p: atomic_write_json(p, {"a": 1}),
    "text": lambda p: atomic_write_text(p, "x\n"),
    "bytes": lambda p: atomic_write_bytes(p, b"x"),
    "torch": lambda p: atomic_torch_save({"w": torch.zeros(2)}, p),
    "checkpoint": lambda p: save_checkpoint(p, arch={"name": "mlp", "kwargs": {}}, state_dict={}),
}


# ---------------------------------------------------------------------------------------------
# finding 2: special files at the target


@pytest.mark.parametrize("writer", list(WRITERS))
def test_every_writer_refuses_a_target_that_is_not_a_regular_file(tmp_path, writer):
    targets = _specials(tmp_path / "t")
    before = {name: _state(p) for name, p in targets.items()}
    listing = sorted(os.listdir(tmp_path / "t"))
    for name, path in targets.items():
        with pytest.raises(PrunelabError) as exc:
            WRITERS[writer](path)
        message = str(exc.value)
        assert "\n" not in message and str(path) in message and WORDS[name] in message, (name, message)
        with pytest.raises(PrunelabError):
            check_writable(path)
    assert {name: _state(p) for name, p in targets.items()} == before
    assert sorted(os.listdir(tmp_path / "t")) == listing, "a refused write left a file behind"


def test_devices_themselves_are_refused_by_the_checks(tmp_path):
    """The argument-time check names the device; it creates nothing (not even a probe in /dev)."""
    from prunelab.io import output_target

    for dev in DEVICES:
        before = sorted(os.listdir("/dev"))
        for check in (check_writable, output_target):
            with pytest.raises(PrunelabError, match="character device, not a regular file"):
                check(dev)
        assert sorted(os.listdir("/dev")) == before


def test_symlink_to_a_regular_file_is_written_through(tmp_path):
    """The user plainly means the file the link names: it gets the new content (atomically, in its own
    folder); the link, and a link to the link, stay links."""
    (tmp_path / "data").mkdir()
    (tmp_path / "links").mkdir()
    real = tmp_path / "data" / "result.json"
    real.write_text("old\n")
    link = tmp_path / "links" / "result.json"
    os.symlink("../data/result.json", link)
    chain = tmp_path / "links" / "chain.json"
    os.symlink("result.json", chain)
    assert atomic_write_json(link, {"a": 1}) == link
    assert json.loads(real.read_text()) == {"a": 1}
    atomic_write_json(chain, {"a": 2})
    assert json.loads(real.read_text()) == {"a": 2}
    assert os.readlink(link) == "../data/result.json" and os.readlink(chain) == "result.json"
    assert sorted(os.listdir(tmp_path / "data")) == ["result.json"]
    assert sorted(os.listdir(tmp_path / "links")) == ["chain.json", "result.json"]
    assert check_writable(link) == link


def _refuse_before_work(monkeypatch, module: str) -> None:
    """Stub the command's work: if the output check lets a bad target through, the test fails before
    anything can be written (so a device given by its own name is never at risk)."""
    import importlib

    mod = importlib.import_module(f"prunelab.cli.{module}")
    monkeypatch.setattr(mod, "run", lambda args: pytest.fail(f"{module} started work on a refused output"))


@pytest.mark.parametrize(("argv", "module"), [
    (["export", "cnn", "--format", "onnx", "--out", "{t}"], "export"),
    (["export", "cnn", "--format", "sparse", "--out", "{t}"], "export"),
    (["bench", "cnn", "--out", "{t}"], "bench"),
    (["train", "--model", "cnn", "--data", "digits", "--out", "{t}", *TRAIN], "train"),
    (["train", "--model", "cnn", "--data", "digits", "--out", "o.pt", "--state", "{t}", *TRAIN], "train"),
    (["results", "st", "--csv", "--output", "{t}"], "results"),
], ids=lambda v: " ".join(v[:3]) if isinstance(v, list) else None)
@pytest.mark.parametrize("kind", ["/dev/null", "/dev/full", "link-null", "fifo", "socket", "dangling"])
def test_cli_refuses_special_outputs_before_any_work(argv, module, kind, tmp_path, monkeypatch, capsys):
    targets = _specials(tmp_path / "t")
    if kind not in targets and not kind.startswith("/dev/"):
        pytest.skip(f"no {kind} here")
    target = kind if kind.startswith("/dev/") else targets[kind]
    before = _state(Path(target))
    _refuse_before_work(monkeypatch, module)
    monkeypatch.chdir(tmp_path)
    code = main([a.replace("{t}", str(target)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and str(target) in err, err
    assert "not a regular file" in err or "does not exist" in err, err
    assert _state(Path(target)) == before
    assert sorted(os.listdir(tmp_path)) == ["t"]


@pytest.mark.parametrize("argv", [
    ["report", "st", "--out", "{t}"],
    ["study", "run", "spec.yaml", "--out", "{t}", "--quiet"],
    ["reduce", "--model", "cnn", "--data", "digits", "--target-params", "1e4", "--out", "{t}", *TRAIN],
], ids=lambda v: v[0])
def test_cli_refuses_a_special_file_as_output_folder(argv, tmp_path, monkeypatch, capsys):
    targets = _specials(tmp_path / "t")
    module = {"study": "study", "report": "report", "reduce": "reduce"}[argv[0]]
    _refuse_before_work(monkeypatch, module)
    for kind, word in (("link-null", "character device, not a folder"), ("fifo", "named pipe (FIFO), not a folder")):
        code = main([a.replace("{t}", str(targets[kind])) for a in argv])
        err = capsys.readouterr().err
        assert code == 2 and len(err.splitlines()) == 1 and word in err, err


def test_prune_refuses_a_special_file_where_its_summary_goes(tmp_path, monkeypatch, capsys):
    """``prune --out m.pt`` also writes ``m.json``: a FIFO there is refused before data is loaded."""
    import prunelab.cli.common as common

    # both prune paths load their data through cli.common.load_model_and_data
    monkeypatch.setattr(common, "data_from_args", lambda *a, **k: pytest.fail("prune started work"))
    os.mkfifo(tmp_path / "m.json")
    for extra in ([], ["--structured", "--target-channels", "4"]):
        argv = ["prune", "cnn", "--data", "digits", "--out", str(tmp_path / "m.pt"), *extra, *TRAIN]
        if not extra:
            argv += ["--method", "global", "--sparsity", "0.5"]
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and len(err.splitlines()) == 1 and "m.json: it is a named pipe" in err, err
    assert stat.S_ISFIFO(os.lstat(tmp_path / "m.json").st_mode)
    assert sorted(os.listdir(tmp_path)) == ["m.json"]


# ---------------------------------------------------------------------------------------------
# finding 6: a killed writer's temporary file is removed by the next write


def _host_tag() -> str:
    return hashlib.sha1(socket.gethostname().encode()).hexdigest()[:8]


def _kill_mid_write(dest: Path) -> None:
    """Start a writer of ``dest`` in another process and SIGKILL it after it wrote, before the rename."""
    code = textwrap.dedent(f"""
        import os, sys, time
        from prunelab.io import atomic_write_json
        def stall(fd):
            print("writing", flush=True)
            time.sleep(60)
        os.fsync = stall
        atomic_write_json({str(dest)!r}, {{"half": "written"}})
    """)
    env = {**os.environ, "PYTHONPATH": str(SRC)}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, env=env)
    try:
        assert proc.stdout.readline().strip() == b"writing"
    finally:
        proc.kill()
        proc.wait()


def _temps(folder: Path, name: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith(f".{name}.") and n.endswith(".tmp"))


def test_a_killed_writers_temp_file_is_removed_by_the_next_write(tmp_path):
    dest = tmp_path / "out.json"
    atomic_write_json(dest, {"v": 1})
    _kill_mid_write(dest)
    assert len(_temps(tmp_path, "out.json")) == 1, "the killed writer left no temporary file to clean"
    assert json.loads(dest.read_text()) == {"v": 1}
    atomic_write_json(dest, {"v": 2})
    assert _temps(tmp_path, "out.json") == []
    assert json.loads(dest.read_text()) == {"v": 2}


def test_only_abandoned_temp_files_of_ours_are_removed(tmp_path):
    """Live writers' files, other destinations' files, foreign names, links and young files whose
    writer cannot be checked all stay; only ours for this destination whose writer is gone go."""
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    host, other_host = _host_tag(), "0" * 8 if _host_tag() != "0" * 8 else "1" * 8
    old = time.time() - 2 * 3600
    (tmp_path / "keep.txt").write_text("keep")
    names = {
        f".out.json.plab-{dead.pid}-{host}-abcd_123.tmp": "gone",  # writer dead: removed
        f".out.json.plab-{live.pid}-{host}-abcd_123.tmp": "kept",  # writer alive
        f".other.json.plab-{dead.pid}-{host}-abcd_123.tmp": "kept",  # another destination
        f".out.json.plab-{dead.pid}-{other_host}-abcd_123.tmp": "kept",  # another host, young
        f".out.json.plab-{dead.pid + 1}-{other_host}-abcdefgh.tmp": "old-gone",  # another host, an hour old
        ".out.json.abcdefgh.tmp": "kept",  # an earlier version's name, young
        ".out.json.zyxwvuts.tmp": "old-gone",  # an earlier version's name, an hour old
        ".out.json.notours.tmp": "old-kept",  # not our pattern
        "out.json.plab-1-00000000-abcdefgh.tmp": "old-kept",  # not hidden: not our pattern
    }
    try:
        for name, fate in names.items():
            (tmp_path / name).write_text("x")
            if fate.startswith("old"):
                os.utime(tmp_path / name, (old, old))
        link = f".out.json.plab-{dead.pid}-{host}-linkname.tmp"
        os.symlink("keep.txt", tmp_path / link)  # a link is never ours
        fifo = f".out.json.plab-{dead.pid}-{host}-fifoname.tmp"
        os.mkfifo(tmp_path / fifo)
        atomic_write_json(tmp_path / "out.json", {"v": 1})
        left = set(os.listdir(tmp_path))
    finally:
        live.kill()
        live.wait()
    for name, fate in names.items():
        assert (name in left) == fate.endswith("kept"), (name, fate)
    assert link in left and fifo in left and (tmp_path / "keep.txt").read_text() == "keep"


@pytest.mark.parametrize("relative", [False, True])
def test_a_write_started_inside_another_keeps_the_outer_temp_file(tmp_path, monkeypatch, relative):
    """Two writes of one destination in one process (threads, nested calls), by relative or absolute
    paths: the second must not take the first's temporary file for an orphan of this PID."""
    real_fsync = os.fsync
    calls = []
    monkeypatch.chdir(tmp_path)
    outer = Path("out.json") if relative else tmp_path / "out.json"
    inner = tmp_path / "out.json" if relative else Path("out.json")

    def fsync(fd):
        calls.append(fd)
        if len(calls) == 1:
            atomic_write_json(inner, {"inner": True})
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    atomic_write_json(outer, {"outer": True})
    assert json.loads((tmp_path / "out.json").read_text()) == {"outer": True}
    assert _temps(tmp_path, "out.json") == []


# ---------------------------------------------------------------------------------------------
# finding 6: a full disk is one line, and the old file is kept


def _torch_disk_full(monkeypatch, *, with_cause: bool = True) -> None:
    """torch.save as it fails on a full disk: some bytes written, then its own RuntimeError (the
    OSError from the file object is only the exception's context)."""
    def save(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 partial")
        if not with_cause:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598")
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError:
            raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 704 vs 598") from None

    monkeypatch.setattr(torch, "save", save)


@pytest.mark.parametrize("with_cause", [True, False])
def test_torch_save_on_a_full_disk_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch, with_cause):
    dest = tmp_path / "model.pt"
    save_checkpoint(dest, arch={"name": "mlp", "kwargs": {}}, state_dict={"w": torch.ones(3)})
    before = dest.read_bytes()
    _torch_disk_full(monkeypatch, with_cause=with_cause)
    if not with_cause:  # torch gave no OSError: the free space tells
        monkeypatch.setattr(os, "statvfs", lambda p: os.statvfs_result((4096, 4096, 10, 0, 0, 10, 0, 0, 0, 255)))
    with pytest.raises(PrunelabError) as exc:
        save_checkpoint(dest, arch={"name": "mlp", "kwargs": {}}, state_dict={"w": torch.zeros(3)})
    assert "no space left on device" in str(exc.value) and "existing file is kept" in str(exc.value)
    assert dest.read_bytes() == before
    assert os.listdir(tmp_path) == ["model.pt"]


def test_an_unrelated_torch_runtime_error_is_not_called_a_full_disk(tmp_path, monkeypatch):
    monkeypatch.setattr(torch, "save", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError, match="boom"):
        atomic_torch_save({}, tmp_path / "x.pt")
    assert os.listdir(tmp_path) == []


def test_enospc_on_fsync_is_one_line_and_keeps_the_old_file(tmp_path, monkeypatch):
    dest = tmp_path / "b.json"
    dest.write_text("old")

    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    with pytest.raises(PrunelabError, match="no space left on device"):
        atomic_write_json(dest, {"new": 1})
    assert dest.read_text() == "old" and os.listdir(tmp_path) == ["b.json"]


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("ckpts")
    torch.manual_seed(0)
    cnn = resolve("cnn")
    save_checkpoint(d / "cnn.pt", arch=cnn.to_dict(), state_dict=create(cnn).state_dict(),
                    meta={"input_shape": [1, 8, 8]})
    from prunelab.prune.unstructured import prune_global

    masked = create(cnn)
    prune_global(masked, 0.5)
    save_checkpoint(d / "masked.pt", arch=cnn.to_dict(), state_dict=masked.state_dict(),
                    meta={"input_shape": [1, 8, 8]})
    assert main(["prune", str(d / "cnn.pt"), "--structured", "--data", "digits", "--target-channels", "4",
                 "--allow-miss", "--out", str(d / "channels.pt"), *TRAIN]) == 0
    return d


@pytest.mark.parametrize("argv", [
    ["train", "--model", "cnn", "--data", "digits", "--out", "{o}/old.pt", *TRAIN],
    ["prune", "{c}/cnn.pt", "--method", "global", "--sparsity", "0.5", "--data", "digits", "--out", "{o}/old.pt",
     *TRAIN],
    ["export", "{c}/masked.pt", "--format", "sparse", "--out", "{o}/old.pt", "--policy", "sparse"],
    ["scratch", "{c}/channels.pt", "--data", "digits", "--out", "{o}/dir", *TRAIN],
    ["reduce", "--model", "cnn", "--data", "digits", "--target-params", "1e4", "--out", "{o}/dir", *TRAIN],
    ["pfs", "--model", "cnn", "--data", "digits", "--target-macs-ratio", "0.5", "--gate-epochs", "1",
     "--gate-batch-size", "256", "--tol", "0.1", "--out", "{o}/dir", *TRAIN],
    ["copy-profile", "{c}/channels.pt", "--base", "cnn", "--alpha", "0.5", "--data", "digits", "--out", "{o}/dir",
     *TRAIN],
], ids=lambda v: v[0])
def test_every_command_says_disk_full_in_one_line(argv, ckpts, tmp_path, monkeypatch, capsys):
    (tmp_path / "old.pt").write_bytes(b"the old checkpoint")
    _torch_disk_full(monkeypatch)
    code = main([a.replace("{o}", str(tmp_path)).replace("{c}", str(ckpts)) for a in argv])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "no space left on device" in err, err
    assert (tmp_path / "old.pt").read_bytes() == b"the old checkpoint"
    leftovers = [p.name for p in tmp_path.rglob("*.tmp")]
    assert leftovers == []


def test_a_study_run_that_hits_a_full_disk_fails_with_one_line(tmp_path, monkeypatch):
    from prunelab.study import run_study
    from prunelab.study.store import ResultsStore

    (tmp_path / "s.yaml").write_text("name: t\ndata: {name: digits}\ntrain: {epochs: 1, max_steps: 1}\n"
                                     "models: [mlp]\nmethods: [dense]\n")
    _torch_disk_full(monkeypatch)
    run_study(tmp_path / "s.yaml", tmp_path / "st", progress=False)
    with ResultsStore.open(tmp_path / "st") as store:
        (status, error), = store.query("SELECT status, error FROM runs")
    assert status == "failed" and "no space left on device" in error and "\n" not in error, error


def test_the_store_says_the_disk_is_full_not_corrupted(tmp_path):
    """SQLite's SQLITE_FULL ("database or disk is full"), here from a page limit: the store is intact."""
    from prunelab.study.runner import prepare_study
    from prunelab.study.store import ResultsStore

    (tmp_path / "s.yaml").write_text("name: t\ndata: {name: digits}\nmodels: [mlp]\nmethods: [dense]\n")
    spec, _, store = prepare_study(tmp_path / "s.yaml", tmp_path / "st")
    with store:
        pages = store.conn.execute("PRAGMA page_count").fetchone()[0]
        store.conn.execute(f"PRAGMA max_page_count = {pages}")
        with pytest.raises(PrunelabError) as exc:
            store._set_meta({"note": "x" * 100_000})
    message = str(exc.value)
    assert "no space left on device" in message and "corrupt" not in message, message
    with ResultsStore.open(tmp_path / "st") as again:
        assert again.meta["name"] == "t" and "note" not in again.meta


# ---------------------------------------------------------------------------------------------
# a real full file system (a small tmpfs in a user namespace; skipped where the kernel refuses)

FULL_DISK_SCRIPT = r"""
import json, os, sys, torch
from prunelab.cli import main
from prunelab.errors import PrunelabError
from prunelab.io import atomic_torch_save
mnt, study = sys.argv[1], sys.argv[2]
out = {}
with open(os.path.join(mnt, "old.pt"), "wb") as fh:
    fh.write(b"old")
with open(os.path.join(mnt, "fill"), "wb") as fh:  # leave about 100 KB
    free = os.statvfs(mnt).f_bavail * os.statvfs(mnt).f_frsize
    fh.write(b"\0" * max(0, free - 100_000))
try:
    atomic_torch_save({"w": torch.zeros(300_000)}, os.path.join(mnt, "old.pt"))
    out["save"] = "no error"
except PrunelabError as exc:
    out["save"] = str(exc)
with open(os.path.join(mnt, "old.pt"), "rb") as fh:
    out["old"] = fh.read().decode()
fd = os.open(os.path.join(mnt, "fill"), os.O_WRONLY | os.O_APPEND)  # now fill it to the last byte
try:
    while True:
        os.write(fd, b"\0" * 512)
except OSError:
    pass
os.close(fd)
for name, argv in (("report", ["report", study, "--out", os.path.join(mnt, "rep")]),
                   ("study", ["study", "run", os.path.join(study, "study.yaml"), "--out", os.path.join(mnt, "st"),
                              "--quiet"])):
    import contextlib, io
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            code = main(argv)
        except BaseException as exc:
            code = repr(exc)
    out[name] = [code, err.getvalue()]
out["left"] = sorted(n for n in os.listdir(mnt) if n.endswith(".tmp"))
print(json.dumps(out))
"""


def _userns_tmpfs() -> bool:
    if shutil.which("unshare") is None:
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /mnt 2>/dev/null || "
                            "mount -t tmpfs -o size=64k tmpfs /tmp"], capture_output=True, timeout=30)
    return probe.returncode == 0


def test_a_real_full_file_system(tmp_path, small_study):
    if not _userns_tmpfs():
        pytest.skip("cannot mount a small tmpfs in a user namespace here")
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    script = tmp_path / "full.py"
    script.write_text(FULL_DISK_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLCONFIGDIR": str(tmp_path / "mpl")}
    shell = 'mount -t tmpfs -o size=1m tmpfs "$1" && exec "$2" "$3" "$1" "$4"'
    proc = subprocess.run(["unshare", "-rm", "sh", "-c", shell, "sh", str(mnt), sys.executable, str(script),
                           str(small_study)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert "no space left on device" in out["save"] and out["old"] == "old", out
    for name in ("report", "study"):
        code, err = out[name]
        assert code == 2 and len(err.splitlines()) == 1 and "no space left on device" in err, (name, err)
    assert out["left"] == []


# ---------------------------------------------------------------------------------------------
# finding 5: a killed report never leaves a partial picture that report.md links


@pytest.fixture(scope="module")
def small_study(tmp_path_factory) -> Path:
    from prunelab.study import run_study

    d = tmp_path_factory.mktemp("kill")
    (d / "spec.yaml").write_text("name: rk\ndata: digits\nmodels: [a]\nmethods:\n  - {name: m1, kind: noop}\n"
                                 "targets: [{sparsity: [0.5, 0.8]}]\nseeds: 2\n")
    run_study(d / "spec.yaml", d / "st", progress=False)
    return d / "st"


KILL_SCRIPT = r"""
import json, os, signal, sys, time, random
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot  # noqa: F401  (everything the report needs is imported once, before the forks)
import prunelab.cli.report, prunelab.report, prunelab.study.results, prunelab.study.store  # noqa: F401
from prunelab.cli import main
study, out, kills, seed = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])

def report():
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
        os._exit(main(["report", study, "--out", out]))
    return pid

def listing():
    try:
        return {e.name: (e.stat().st_size, e.stat().st_mtime_ns) for e in os.scandir(out)}
    except OSError:
        return {}

def first_write(pid):
    # wait until the report touches its folder: the start of the phase that writes files
    before = listing()
    while listing() == before:
        if os.waitpid(pid, os.WNOHANG)[0]:
            return False
        time.sleep(0.0005)
    return True

pid = report()
assert first_write(pid)
start = time.perf_counter()
_, status = os.waitpid(pid, 0)
assert os.waitstatus_to_exitcode(status) == 0
phase = time.perf_counter() - start
rng = random.Random(seed)
for i in range(kills):
    pid = report()
    first_write(pid)
    time.sleep(0 if i == 0 else rng.uniform(0.0, phase))  # first the moment the first file is written
    os.kill(pid, signal.SIGKILL)
    _, status = os.waitpid(pid, 0)
    print(json.dumps({"kill": i, "killed": os.WIFSIGNALED(status)}), flush=True)
    sys.stdin.readline()  # the test checks the folder now
pid = report()
_, status = os.waitpid(pid, 0)
print(json.dumps({"final": os.waitstatus_to_exitcode(status)}), flush=True)
"""

PNG_END = b"IEND\xaeB`\x82"


def _broken_links(folder: Path) -> list[str]:
    """Pictures report.md links that are missing, empty or cut short, and partial PNGs anywhere."""
    import re

    bad = []
    text = (folder / "report.md").read_text()
    html = (folder / "report.html").read_text()
    links = set(re.findall(r"!\[[^\]]*\]\(([^)]+)\)", text)) | set(re.findall(r'<img src="([^"]+)"', html))
    assert links, "the report links no picture"
    for name in sorted(links | {p.name for p in folder.glob("*.png")}):
        data = (folder / name).read_bytes() if (folder / name).is_file() else b""
        if not (data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(PNG_END)):
            bad.append(f"{name} ({len(data)} bytes)")
    return bad


def test_killing_report_never_leaves_a_linked_file_missing_or_partial(small_study, tmp_path):
    out = tmp_path / "rep"
    kills = 4
    env = {**os.environ, "PYTHONPATH": str(SRC), "MPLCONFIGDIR": str(tmp_path / "mpl")}
    proc = subprocess.Popen([sys.executable, "-c", KILL_SCRIPT, str(small_study), str(out), str(kills), "11"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)
    killed = 0
    try:
        for _ in range(kills):
            line = proc.stdout.readline()
            assert line, "the kill script stopped"
            killed += json.loads(line)["killed"]  # False: that report finished before its kill point
            assert _broken_links(out) == []
            proc.stdin.write("\n")
            proc.stdin.flush()
        assert json.loads(proc.stdout.readline()) == {"final": 0}
    finally:
        proc.kill()
        proc.wait()
    assert killed >= kills // 2, f"only {killed} of {kills} reports were killed before they finished"
    assert _broken_links(out) == []
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == [], "temporary files were not cleaned"


def test_report_plots_are_written_atomically(small_study, tmp_path, monkeypatch):
    """A picture that fails half-way (here: ENOSPC after the first bytes) leaves no file under its name,
    and no report.md that would link it."""
    from matplotlib.figure import Figure

    from prunelab.report import write_report

    real = Figure.savefig

    def savefig(self, fname, *args, **kwargs):
        if hasattr(fname, "write"):
            fname.write(b"\x89PNG partial")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Figure, "savefig", savefig)
    with pytest.raises(PrunelabError, match="no space left on device"):
        write_report(small_study, tmp_path / "rep")
    assert [p.name for p in (tmp_path / "rep").iterdir()] == []
    monkeypatch.setattr(Figure, "savefig", real)
    assert _broken_links(write_report(small_study, tmp_path / "rep").markdown.parent) == []


def test_report_on_a_full_disk_is_one_line_exit_2(small_study, tmp_path, monkeypatch, capsys):
    def fsync(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", fsync)
    code = main(["report", str(small_study), "--out", str(tmp_path / "rep")])
    err = capsys.readouterr().err
    assert code == 2 and len(err.splitlines()) == 1 and "no space left on device" in err, err


# ---------------------------------------------------------------------------------------------
# one write helper: no module writes a file another way


#: (module, call) pairs that write a file without the helper, and why that is right
ALLOWED_WRITERS = {
    ("prunelab/study/launch.py", "open for writing"): "appends live progress lines, not an output",
    ("prunelab/study/executors.py", "open for writing"): "the log of a torchrun launch, handed to the child",
    ("prunelab/study/methods/synthetic.py", "os.open"): "the test-only synthetic method's marker lines",
    ("prunelab/study/methods/synthetic.py", "write_text"): "the test-only synthetic method, in a fresh artifact folder",
    ("prunelab/study/context.py", "open for writing"): "the lock file of a shared artifact, locked, never written",
    ("prunelab/measure/timing.py", "open for writing"): "resets peak memory via /proc/self/clear_refs",
    ("prunelab/cli/__init__.py", "open for writing"): "stdout to os.devnull on ranks other than 0",
    ("prunelab/cli/__init__.py", "os.open"): "stdout to os.devnull after a broken pipe",
}
FILE_OBJECTS = {"fh", "buf", "f"}


def _writes(tree: ast.AST):
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        first = node.args[0] if node.args else None
        target = first.id if isinstance(first, ast.Name) else None
        if name in ("write_text", "write_bytes") or (
                name in ("savefig", "to_csv", "to_json", "to_parquet") and isinstance(func, ast.Attribute)
                and first is not None and target not in FILE_OBJECTS):  # no path: returns the text
            yield node.lineno, name
        elif name == "save" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "torch":
            if not (len(node.args) > 1 and isinstance(node.args[1], ast.Name) and node.args[1].id in FILE_OBJECTS):
                yield node.lineno, "torch.save"
        elif name == "export" and isinstance(func, ast.Attribute) and isinstance(func.value, ast.Attribute) \
                and func.value.attr == "onnx":
            if not (len(node.args) > 2 and isinstance(node.args[2], ast.Name) and node.args[2].id in FILE_OBJECTS):
                if any(k.arg == "dynamo" and getattr(k.value, "value", None) is True for k in node.keywords):
                    continue  # returns a program in memory, writes nothing
                yield node.lineno, "torch.onnx.export"
        elif name == "open" and isinstance(func, ast.Name):
            modes = [a for a in node.args[1:2]] + [k.value for k in node.keywords if k.arg == "mode"]
            if any(isinstance(m, ast.Constant) and set(str(m.value)) & set("wax+") for m in modes):
                yield node.lineno, "open for writing"
        elif name == "open" and isinstance(func, ast.Attribute) and getattr(func.value, "id", "") == "os":
            yield node.lineno, "os.open"


def test_every_output_goes_through_the_write_helper():
    found = []
    for path in sorted((SRC / "prunelab").rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        if rel == "prunelab/io.py":  # the helper itself
            continue
        for lineno, what in _writes(ast.parse(path.read_text())):
            if (rel, what) not in ALLOWED_WRITERS:
                found.append(f"{rel}:{lineno}: {what}")
    assert found == [], "write through prunelab.io.atomic_write instead:\n" + "\n".join(found)


def test_the_writer_scan_finds_direct_writes():
    tree = ast.parse("fig.savefig(path)\ntorch.save(x, path)\nopen(p, 'w')\nPath(p).write_text('x')\n"
                     "torch.onnx.export(m, (x,), path)\nfig.savefig(fh)\ntorch.save(x, fh)\nopen(p)\n")
    assert [what for _, what in _writes(tree)] == ["savefig", "torch.save", "open for writing", "write_text",
                                                   "torch.onnx.export"]

