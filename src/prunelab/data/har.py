"""UCI-HAR (Human Activity Recognition Using Smartphones) from its text files, as (T=128, F=9) sequences.

Reads the nine raw inertial signals of the official release::

    UCI HAR Dataset/{train,test}/Inertial Signals/{body_acc,body_gyro,total_acc}_{x,y,z}_{train,test}.txt
    UCI HAR Dataset/{train,test}/y_{train,test}.txt            (labels 1..6)
    UCI HAR Dataset/train/subject_train.txt                     (optional: subject-disjoint validation)

Channels are stacked in the order body_acc xyz, body_gyro xyz, total_acc xyz and standardised per
channel with the training split's statistics (the EdgeML ``process_har`` preprocessing used by FastGRNN,
Kusupati et al. 2018). Validation: when ``subject_train.txt`` is present, ``int(n_subjects * val_fraction
+ 1)`` training subjects are held out (EdgeML's subject split); otherwise a stratified share of windows.

``binary=True`` gives HAR-2, FastGRNN's binarisation (Kusupati et al. 2018, appendix): the classes
{Sitting, Laying, Walking_Upstairs} and {Standing, Walking, Walking_Downstairs} are merged, i.e. the
even original labels (2, 4, 6) become class 0 and the odd ones (1, 3, 5) class 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from prunelab.data.base import Augment, DataBundle
from prunelab.data.registry import register_dataset
from prunelab.data.splits import channel_stats, check_fraction, normalize, stratified_split, to_split
from prunelab.errors import PrunelabError

SIGNALS = tuple(f"{kind}_{axis}" for kind in ("body_acc", "body_gyro", "total_acc") for axis in "xyz")
ACTIVITIES = ("WALKING", "WALKING_UPSTAIRS", "WALKING_DOWNSTAIRS", "SITTING", "STANDING", "LAYING")
FOLDER = "UCI HAR Dataset"
WINDOW = 128


def har2_labels(labels_1_to_6: np.ndarray) -> np.ndarray:
    """HAR-2 classes from the original 1-based activity labels (odd -> 1, even -> 0)."""
    return (np.asarray(labels_1_to_6, dtype=np.int64) % 2).astype(np.int64)


def _locate(root: Path) -> Path:
    for cand in (root / FOLDER, root):
        if (cand / "train" / "Inertial Signals").is_dir() or (cand / "train" / "y_train.txt").is_file():
            return cand
    raise PrunelabError(f"UCI-HAR not found under {root}: extract 'UCI HAR Dataset.zip' there so that "
                        f"{root / FOLDER}/train/Inertial Signals/body_acc_x_train.txt exists")


def _read_numbers(path: Path, what: str, row_length: int | None = None) -> np.ndarray:
    """The file's numbers, flat; with ``row_length``, every non-empty line must hold that many (a
    short line would otherwise shift every later window without notice). NaN and inf are refused:
    one would poison its channel's normalisation statistics and so every window."""
    if not path.is_file():
        raise PrunelabError(f"UCI-HAR is incomplete: {what} file {path} is missing")
    try:
        text = path.read_text()
    except UnicodeDecodeError as exc:
        raise PrunelabError(f"UCI-HAR file {path} is corrupt: not whitespace-separated numbers") from exc
    if row_length is not None:
        for number, line in enumerate(text.splitlines(), 1):
            count = len(line.split())
            if count and count != row_length:
                raise PrunelabError(f"UCI-HAR file {path} is corrupt: line {number} has {count} values, "
                                    f"expected {row_length}")
    try:
        with np.errstate(over="ignore"):  # a value beyond float32 becomes inf, refused below
            values = np.array(text.split(), dtype=np.float32)
    except ValueError as exc:
        raise PrunelabError(f"UCI-HAR file {path} is corrupt: not whitespace-separated numbers") from exc
    if not np.isfinite(values).all():
        bad = int(np.flatnonzero(~np.isfinite(values))[0])
        where = f"line {bad // row_length + 1}" if row_length else f"value {bad + 1}"
        raise PrunelabError(f"UCI-HAR file {path} is corrupt: {where} holds {values[bad]} (NaN or inf)")
    return values


def _read_split(base: Path, split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    y_path = base / split / f"y_{split}.txt"
    y = _read_numbers(y_path, "label")
    if y.size == 0:
        raise PrunelabError(f"UCI-HAR file {y_path} is empty: it needs one label (1..6) per window")
    if np.any(y != np.round(y)) or y.min() < 1 or y.max() > 6:
        raise PrunelabError(f"UCI-HAR file {y_path} is corrupt: labels must be integers 1..6")
    y = y.astype(np.int64)
    channels = []
    for sig in SIGNALS:
        path = base / split / "Inertial Signals" / f"{sig}_{split}.txt"
        values = _read_numbers(path, "signal", WINDOW)
        if values.size != y.size * WINDOW:
            raise PrunelabError(f"UCI-HAR file {path} is corrupt: expected {y.size} rows of {WINDOW} values "
                                f"(one per label in y_{split}.txt), got {values.size} values")
        channels.append(values.reshape(y.size, WINDOW))
    x = np.stack(channels, axis=-1)  # (N, T, F)
    subjects = None
    s_path = base / split / f"subject_{split}.txt"
    if s_path.is_file():
        s = _read_numbers(s_path, "subject")
        if s.size != y.size:
            raise PrunelabError(f"UCI-HAR file {s_path} is corrupt: {s.size} subjects for {y.size} labels")
        subjects = s.astype(np.int64)
    return x, y, subjects


def _subject_split(subjects: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.unique(subjects)
    n_val = min(int(ids.size * fraction + 1), ids.size - 1)
    val_ids = np.random.default_rng(seed).permutation(ids)[:n_val]
    held = np.isin(subjects, val_ids)
    return np.flatnonzero(~held), np.flatnonzero(held)


def load_har(root, *, val_fraction: float = 0.1, seed: int = 0, binary: bool = False) -> DataBundle:
    """UCI-HAR raw inertial windows (128 x 9); ``binary=True`` for HAR-2 (FastGRNN)."""
    base = _locate(Path(root).expanduser())
    val_fraction = check_fraction("val_fraction", val_fraction)
    x, y, subjects = _read_split(base, "train")
    x_test, y_test, _ = _read_split(base, "test")
    if binary:
        y, y_test, num_classes = har2_labels(y), har2_labels(y_test), 2
        names = ["sitting/laying/walking_upstairs", "standing/walking/walking_downstairs"]
    else:
        y, y_test, num_classes = y - 1, y_test - 1, 6
        names = [a.lower() for a in ACTIVITIES]
    if val_fraction == 0.0:
        keep, held = np.arange(y.size), np.arange(0)
    elif subjects is not None and np.unique(subjects).size >= 2:
        keep, held = _subject_split(subjects, val_fraction, seed)
    else:
        keep, held = stratified_split(y, val_fraction, seed)
    mean, std = channel_stats(x[keep], channel_axis=-1)
    x, x_test = normalize(x, mean, std, -1), normalize(x_test, mean, std, -1)
    return DataBundle(
        name="har2" if binary else "har",
        train=to_split(x[keep], y[keep]),
        val=to_split(x[held], y[held]),
        test=to_split(x_test, y_test),
        num_classes=num_classes,
        input_shape=(WINDOW, len(SIGNALS)),
        task="sequence",
        augment=Augment.none(),
        info={"source": str(base), "signals": list(SIGNALS), "class_names": names, "mean": mean.tolist(),
              "std": std.tolist(), "binary": bool(binary)},
    )


register_dataset("har", load_har, needs_root=True,
                 doc="UCI-HAR raw inertial signals, 128x9 sequences, 6 classes (binary=true: HAR-2)")
