"""Study specs: a YAML file declaring models x methods x targets x protocols x seeds.

Example::

    name: smoke
    data: {name: digits}
    train: {epochs: 2, batch_size: 64, lr: 0.05}
    models: [mlp-s, {name: resnet-8, kwargs: {width: 8}, label: resnet-8-w8}]
    methods:
      - dense                                  # name = kind
      - {name: gmp, kind: global-magnitude, mt_percent: 0.05, protocols: [finetune]}
    targets: [{sparsity: [0.5, 0.8, 0.9]}, {params: 20000}]
    protocols: [finetune, scratch-e]
    seeds: 3                                   # or [0, 1, 2]
    exclude: [{method: gmp, target: {params: 20000}}]

``claims:`` (optional) states the hypotheses the report tests, each a paired comparison of two arms
(see :mod:`prunelab.study.claims`); they are checked against the runs but change none of them.

``runs:`` (optional) lists sub-products instead of the full product: each entry may fix
``model(s)``, ``method(s)``, ``target(s)``, ``protocol(s)``, ``seed(s)`` and takes the study's axes for
the rest. ``exclude`` / ``include`` are patterns over ``model``, ``method``, ``kind``, ``protocol``,
``target`` and ``seed`` (a list value matches any of its items). A method entry's own
``protocols`` / ``targets`` replace the study's axes for that method, and its ``train`` mapping
overrides training settings; every other key is a parameter of the method's kind.

Everything is checked before a run starts: malformed YAML (with its line), unknown keys, unknown
model / dataset / method kind / protocol names, the type and range of every training and ``measure``
setting (a device by its form: it need not be present on the machine that validates; ``measure``'s
``min_time_s`` at most 60 seconds and ``repeats`` at most 100,000), impossible
targets, methods that expand to no runs, and combinations a kind cannot run. ``plugins`` are imported
first, so the kinds they register can be used (``study validate`` runs no code from the spec: it only
finds them, and leaves the methods of kinds they would register unchecked). The study ``name`` names its
folder: letters, digits, ``.``, ``_`` and ``-``, starting with a letter or digit. The YAML itself is
bounded (size, nesting depth, nodes and aliases; see :mod:`prunelab.study.yaml_limits`), and so is the
number of runs a spec expands to (:data:`MAX_RUNS`). Errors are one line, prefixed with ``file:line`` where
the YAML tells us. Numbers follow YAML 1.2: ``1e-3`` is a float (PyYAML's YAML 1.1 would read a string).

The package: :mod:`~prunelab.study.spec.yaml_lines` (YAML with line numbers),
:mod:`~prunelab.study.spec.model` (the typed spec), :mod:`~prunelab.study.spec.fields` (one parser per
key), :mod:`~prunelab.study.spec.parse` (files, top-level keys, patterns) and
:mod:`~prunelab.study.spec.expand` (runs from the axes).
"""

from prunelab.study.spec.expand import ENTRY_KEYS, MAX_RUNS
from prunelab.study.spec.fields import MAX_MEASURE_BATCH, MAX_MEASURE_MIN_TIME_S, MAX_MEASURE_REPEATS, MAX_SEEDS
from prunelab.study.spec.model import DataSpec, MethodSpec, ModelSpec, StudySpec
from prunelab.study.spec.parse import NAME_RULE, PATTERN_KEYS, TOP_KEYS, load_spec, parse_spec, spec_from_dict

__all__ = [
    "ENTRY_KEYS",
    "MAX_MEASURE_BATCH",
    "MAX_MEASURE_MIN_TIME_S",
    "MAX_MEASURE_REPEATS",
    "MAX_RUNS",
    "MAX_SEEDS",
    "NAME_RULE",
    "PATTERN_KEYS",
    "TOP_KEYS",
    "DataSpec",
    "MethodSpec",
    "ModelSpec",
    "StudySpec",
    "load_spec",
    "parse_spec",
    "spec_from_dict",
]
