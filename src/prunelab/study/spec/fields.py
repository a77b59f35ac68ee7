"""Parsers of the study spec's keys, one per key: ``data``, ``train``, ``models``, ``methods``, ``seeds``,
``targets``, ``protocols``, ``measure``, ``tracker``. Each checks names, types and ranges against the layer
that owns them (the data and model registries, :class:`~prunelab.train.config.TrainConfig`, the task
kinds) and raises a one-line error at the offending line.
"""

from __future__ import annotations

from typing import Any

from prunelab.errors import PrunelabError, unknown_choice
from prunelab.study.run import canonical_json
from prunelab.study.spec.model import DataSpec, MethodSpec, ModelSpec
from prunelab.study.spec.yaml_lines import LineMap, Where, at_line, item_line, plain
from prunelab.study.targets import check_target

#: keys of a method entry that are not parameters of its kind
METHOD_RESERVED = ("name", "kind", "protocols", "targets", "train")


def mapping(node: LineMap, key: str, where: Where) -> dict[str, Any]:
    value = node.get(key)
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise where.error(node, key, f"{key!r} must be a mapping, got {type(value).__name__}")
    return plain(value)


#: bounds of a latency measurement per run (seconds of timed calls, and calls): each is paid per
#: batch size, thread count and run, so a typo there would keep a study busy for days
MAX_MEASURE_MIN_TIME_S = 60.0
MAX_MEASURE_REPEATS = 100_000
#: the largest batch a study measures latency at (inputs of that many samples are built at once)
MAX_MEASURE_BATCH = 1 << 16


def parse_measure(doc: LineMap, where: Where) -> dict[str, Any]:
    """``measure: {latency, batch_sizes, threads, device, repeats, min_time_s}``: names, types and value
    ranges (``latency`` true or false, ``threads`` may be null for torch's default, ``device`` cpu / cuda /
    cuda:N by its form: whether it is present is asked on the machine that measures)."""
    from prunelab.devices import check_device_name
    from prunelab.study.common import MEASURE_KEYS

    measure = mapping(doc, "measure", where)
    node = doc.get("measure")
    for key, value in measure.items():
        if key not in MEASURE_KEYS:
            raise where.error(node, key, f"unknown measure key {key!r}; valid keys: {', '.join(MEASURE_KEYS)}")
        if key == "latency" and not isinstance(value, bool):
            raise where.error(node, key, f"measure latency must be true or false, got {value!r}")
        if key == "batch_sizes":
            sizes = as_list(value)
            if not sizes or not all(positive_int(b) and b <= MAX_MEASURE_BATCH for b in sizes):
                raise where.error(node, key, f"measure batch_sizes must be positive integers, at most "
                                             f"{MAX_MEASURE_BATCH:,}, got {value!r}")
        elif key == "threads" and value is not None and not positive_int(value):
            raise where.error(node, key, f"measure threads must be a positive integer or null, got {value!r}")
        elif key == "repeats" and not (positive_int(value) and value <= MAX_MEASURE_REPEATS):
            raise where.error(node, key, f"measure repeats must be a positive integer, at most "
                                         f"{MAX_MEASURE_REPEATS:,}, got {value!r}")
        elif key == "min_time_s" and (isinstance(value, bool) or not isinstance(value, int | float)
                                      or not 0 <= value <= MAX_MEASURE_MIN_TIME_S):
            raise where.error(node, key, f"measure min_time_s must be a number >= 0, at most "
                                         f"{MAX_MEASURE_MIN_TIME_S:g} seconds, got {value!r}")
        elif key == "device":
            if not isinstance(value, str):
                raise where.error(node, key, f"measure device must be a device name (cpu, cuda, cuda:N), "
                                             f"got {value!r}")
            try:
                check_device_name(value, timing=True)
            except PrunelabError as exc:
                raise where.error(node, key, f"measure device: {exc}") from None
    return measure


def positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def optional_str(node: LineMap, key: str, where: Where) -> str | None:
    value = node.get(key)
    if value is not None and not isinstance(value, str):
        raise where.error(node, key, f"{key!r} must be a string, got {value!r}")
    return value


def parse_tracker(doc: LineMap, where: Where) -> dict[str, Any]:
    """``tracker: tensorboard`` or ``tracker: {name: mlflow, dir: path}`` (default dir:
    ``<study>/tracking/<name>``). Whether its extra is installed is asked when the study runs."""
    value = doc.get("tracker")
    if value is None:
        return {}
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise where.error(doc, "tracker", "'tracker' must be a tracker name or a mapping with 'name' and 'dir'")
    extra = [k for k in value if k not in ("name", "dir")]
    if extra:
        raise where.error(doc["tracker"], extra[0], f"unknown tracker key {extra[0]!r}; valid keys: name, dir")
    if value.get("dir") is not None and not isinstance(value["dir"], str):
        raise where.error(doc["tracker"], "dir", f"tracker dir must be a path, got {value['dir']!r}")
    from prunelab.track import check_tracker_name

    try:
        check_tracker_name(value["name"])
    except PrunelabError as exc:
        raise where.error(doc, "tracker", str(exc)) from None
    return {"name": value["name"], "dir": value.get("dir")}


def string_list(node: LineMap, key: str, where: Where) -> list[str]:
    value = node.get(key) or []
    value = [value] if isinstance(value, str) else value
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise where.error(node, key, f"{key!r} must be a list of names")
    return list(value)


def parse_data(doc: LineMap, where: Where) -> DataSpec:
    value = doc["data"]
    if isinstance(value, str):
        value = LineMap(name=value)
        value.line, value.key_lines = doc.key_lines["data"], {"name": doc.key_lines["data"]}
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise where.error(doc, "data", "'data' must be a dataset name or a mapping with 'name', 'root', 'options'")
    extra = [k for k in value if k not in ("name", "root", "options")]
    if extra:
        raise where.error(value, extra[0], f"unknown data key {extra[0]!r}; valid keys: name, root, options")
    root = value.get("root")
    if root is not None and not isinstance(root, str):
        raise where.error(value, "root", f"data root must be a path, got {root!r}")
    options = mapping(value, "options", where)
    check_dataset(value["name"], value, where)
    return DataSpec(value["name"], root, options)


def check_dataset(name: str, node: LineMap, where: Where) -> None:
    """Check the dataset against the data layer: a known name, known options, and a root folder that
    is given where the dataset is read from disk. Whether that folder exists depends on the machine
    that runs the study: :func:`missing_data_root` checks it there."""
    from prunelab.data import get_dataset_entry, list_datasets

    valid = list(list_datasets())
    if name not in valid:
        raise where.error(node, "name", str(unknown_choice("dataset", name, valid)))
    entry = get_dataset_entry(name)
    options = node.get("options") or {}
    unknown = sorted(set(options) - set(entry.options()))
    if unknown:
        raise where.error(node, "options", f"unknown option {unknown[0]!r} for dataset {name!r}; valid options: "
                                           f"{', '.join(entry.options()) or 'none'}")
    root = node.get("root")
    if entry.needs_root and root is None:
        raise where.error(node, "name", f"dataset {name!r} is read from disk: give its folder as data 'root'")


def parse_train(node: LineMap, key: str, where: Where) -> dict[str, Any]:
    train = mapping(node, key, where)
    if "seed" in train:
        raise where.error(node[key], "seed", "set seeds with the study's 'seeds' axis, not in 'train'")
    from prunelab.train.config import TrainConfig

    try:
        TrainConfig.from_dict(train)
    except PrunelabError as exc:  # at the setting's own line when the error names one
        setting, value = getattr(exc, "key", None), node.get(key)
        if isinstance(value, LineMap) and setting in value.key_lines:
            raise where.error(value, setting, str(exc)) from None
        raise where.error(node, key, str(exc)) from None
    except TypeError as exc:
        raise where.error(node, key, f"bad training setting: {exc}") from None
    return train


def as_list(value: Any) -> list[Any]:
    return list(value) if isinstance(value, list | tuple) else [value]


def parse_models(doc: LineMap, where: Where) -> list[ModelSpec]:
    items = doc["models"]
    if not isinstance(items, list) or not items:
        raise where.error(doc, "models", "'models' must be a non-empty list of zoo names")
    out: list[ModelSpec] = []
    for item in items:
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise where.error(doc, "models", f"a model is a zoo name or {{name, kwargs, label}}, got {item!r}")
        extra = [k for k in item if k not in ("name", "kwargs", "label")]
        if extra:
            raise where.error(item, extra[0], f"unknown model key {extra[0]!r}; valid keys: name, kwargs, label")
        kwargs = mapping(item, "kwargs", where)
        label = item.get("label")
        if label is None:
            label = item["name"] if not kwargs else item["name"] + "(" + ",".join(
                f"{k}={kwargs[k]}" for k in sorted(kwargs)) + ")"
        if any(m.label == label for m in out):
            raise where.error(item, "name", f"model {label!r} is listed twice (give one a 'label')")
        out.append(ModelSpec(str(label), item["name"], kwargs))
    return out


def parse_methods(doc: LineMap, where: Where, lenient: bool = False) -> list[MethodSpec]:
    """The methods axis. ``lenient``: a kind no module registered may come from a plugin that was not
    imported (``study validate``); it is left unchecked instead of refused."""
    from prunelab.study.tasks import get_kind

    items = doc["methods"]
    if not isinstance(items, list) or not items:
        raise where.error(doc, "methods", "'methods' must be a non-empty list")
    out: list[MethodSpec] = []
    for i, item in enumerate(items):
        node = item if isinstance(item, LineMap) else at_line(item_line(items, i, doc, "methods"))
        if isinstance(item, str):
            item = {"name": item}
        if not isinstance(item, dict) or not isinstance(item.get("name"), str):
            raise where.error(node, None, f"a method is a name or a mapping with 'name' and 'kind', got {item!r}")
        kind = item.get("kind", item["name"])
        if not isinstance(kind, str):
            raise where.error(node, "kind", f"method kind must be a name, got {kind!r}")
        try:
            get_kind(kind)
        except PrunelabError as exc:
            if not lenient:
                raise where.error(node, "kind" if "kind" in item else "name", str(exc)) from None
        if any(m.name == item["name"] for m in out):
            raise where.error(node, "name", f"method name {item['name']!r} is used twice")
        protocols = parse_protocols(item, "protocols", where) if item.get("protocols") is not None else None
        targets = parse_targets(item, "targets", where) if item.get("targets") is not None else None
        train = parse_train(item, "train", where) if isinstance(item, LineMap) else {}
        params = {k: plain(v) for k, v in item.items() if k not in METHOD_RESERVED}
        out.append(MethodSpec(item["name"], kind, params, None if protocols is None else tuple(protocols),
                              None if targets is None else tuple(targets), train))
    return out


#: more seeds than this in one study is a typo (each seed multiplies every run)
MAX_SEEDS = 10_000


def parse_seeds(node: LineMap, key: str, where: Where) -> list[int]:
    value = node[key]
    if isinstance(value, int) and not isinstance(value, bool):
        if not 1 <= value <= MAX_SEEDS:
            raise where.error(node, key, f"'{key}: N' needs 1 <= N <= {MAX_SEEDS:,}, got {value}")
        return list(range(value))
    value = as_list(value)
    if not value or not all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        raise where.error(node, key, f"{key!r} must be a count or a list of integer seeds, got {node[key]!r}")
    if len(set(value)) != len(value):
        raise where.error(node, key, f"{key!r} lists a seed twice: {value}")
    return list(value)


def parse_targets(node: LineMap, key: str, where: Where) -> list[dict | None]:
    out: list[dict | None] = []
    for item in as_list(node[key]):
        if item is None or item == "none":
            out.append(None)
            continue
        if isinstance(item, dict) and len(item) == 1 and isinstance(next(iter(item.values())), list):
            (k, values), = item.items()
            items = [{k: v} for v in values]
        else:
            items = [item]
        for t in items:
            try:
                out.append(check_target(plain(t)))
            except PrunelabError as exc:
                mapped = isinstance(item, LineMap)
                raise where.error(item if mapped else node, None if mapped else key, str(exc)) from None
    return unique(out)


def parse_protocols(node: LineMap, key: str, where: Where) -> list[str | None]:
    from prunelab.study.tasks import PROTOCOLS

    out: list[str | None] = []
    for item in as_list(node[key]):
        if item is None or item == "none":
            out.append(None)
        elif isinstance(item, str) and item in PROTOCOLS:
            out.append(item)
        else:
            raise where.error(node, key, str(unknown_choice("protocol", item, PROTOCOLS)))
    return unique(out)


def unique(items: list[Any]) -> list[Any]:
    seen: set[str] = set()
    out = []
    for item in items:
        k = canonical_json(item)
        if k not in seen:
            seen.add(k)
            out.append(item)
    return out
