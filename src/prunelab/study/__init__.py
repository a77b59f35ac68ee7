"""Studies: models x methods x targets x protocols x seeds, run by run, stored, reported.

Three lines of Python do what ``prunelab study run`` does::

    from prunelab.study import run_study, load_results
    result = run_study("recipes/smoke.yaml", out="studies/smoke")
    df = load_results(result.out_dir)

See :mod:`prunelab.study.spec` for the YAML format, :mod:`prunelab.study.tasks` for adding a method
(a task kind), :mod:`prunelab.study.store` for the results store and its crash-safety rules.
"""

from prunelab.study.context import RunContext
from prunelab.study.results import load_curves, load_layers, load_results
from prunelab.study.run import RunConfig
from prunelab.study.runner import StudyResult, prepare_study, run_study, study_status
from prunelab.study.spec import StudySpec, load_spec, parse_spec, spec_from_dict
from prunelab.study.store import ResultsStore
from prunelab.study.tasks import PROTOCOLS, RunOutput, get_kind, list_kinds, register

__all__ = [
    "PROTOCOLS",
    "ResultsStore",
    "RunConfig",
    "RunContext",
    "RunOutput",
    "StudyResult",
    "StudySpec",
    "get_kind",
    "list_kinds",
    "load_curves",
    "load_layers",
    "load_results",
    "load_spec",
    "parse_spec",
    "prepare_study",
    "register",
    "run_study",
    "spec_from_dict",
    "study_status",
]
