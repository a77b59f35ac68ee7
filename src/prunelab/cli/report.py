"""``prunelab report STUDY``: Markdown and HTML report with plots, from the study's store only."""

from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("study", metavar="STUDY", help="study folder, its results.db, or the spec YAML")
    parser.add_argument("--out", metavar="DIR", default=None, help="report folder (default: <study>/report)")


def run(args) -> int:
    check_report_extras()
    from prunelab.report import write_report

    report = write_report(args.study, args.out)
    print(f"report: {report.markdown} and {report.html} ({len(report.figures)} plots)")
    return 0


def check_report_extras() -> None:
    """Reports need pandas and matplotlib (the ``report`` extra): say so before any work."""
    from prunelab.errors import require

    require("pandas", "the report", "report")
    require("matplotlib", "the report", "report")
