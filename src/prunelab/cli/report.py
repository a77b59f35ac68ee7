"""``prunelab report STUDY``: Markdown and HTML report with plots, from the study's store only.

``--check`` also holds the study to the reporting checklist (Blalock et al. 2020; see
:mod:`prunelab.report.checklist`): the report is written either way, and the command exits 1, naming
each missing item on stderr, when the study does not meet them all.
"""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("study", metavar="STUDY", help="study folder, its results.db, or the spec YAML")
    parser.add_argument("--out", metavar="DIR", default=None, help="report folder (default: <study>/report)")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 if the study misses an item of the reporting checklist (listed on stderr)")


def run(args) -> int:
    check_report_extras()
    from prunelab.report import write_report

    report = write_report(args.study, args.out)
    print(f"report: {report.markdown} and {report.html} ({len(report.figures)} plots)")
    if not args.check:
        return 0
    missing = report.missing
    for item in missing:
        sys.stderr.write(f"prunelab: checklist item missing: {item.name}: {item.evidence}\n")
    if missing:
        return 1
    print(f"checklist: all {len(report.checklist)} items met")
    return 0


def check_report_extras() -> None:
    """Reports need pandas and matplotlib (the ``report`` extra): say so before any work."""
    from prunelab.errors import require

    require("pandas", "the report", "report")
    require("matplotlib", "the report", "report")
