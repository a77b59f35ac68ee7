"""``prunelab results STUDY``: a study's results as a table, CSV or JSON."""

from __future__ import annotations

import sys


def add_arguments(parser) -> None:
    parser.add_argument("study", metavar="STUDY", help="study folder, its results.db, or the spec YAML")
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--csv", action="store_true", help="CSV on stdout (or --output)")
    fmt.add_argument("--json", action="store_true", help="JSON records on stdout (or --output)")
    parser.add_argument("--output", "-o", metavar="FILE", default=None, help="write to FILE instead of stdout")
    parser.add_argument("--all", dest="all_runs", action="store_true",
                        help="include runs no longer in the spec (after --update)")
    parser.add_argument("--status", choices=("pending", "running", "done", "failed"), default=None)
    parser.add_argument("--to", metavar="TRACKER", default=None,
                        help="export the finished runs to a tracker instead: tensorboard or mlflow")
    parser.add_argument("--tracker-dir", metavar="DIR", default=None,
                        help="the tracker's folder (default: <study>/tracking/<tracker>)")


def run(args) -> int:
    if args.to is not None:
        from prunelab.study.tracking import export_study

        n, folder = export_study(args.study, args.to, args.tracker_dir)
        sys.stdout.write(f"{n} runs exported to {args.to} in {folder}\n")
        return 0
    from prunelab.errors import require
    from prunelab.io import atomic_write_text

    pd = require("pandas", "prunelab results", "report")
    from prunelab.study import load_results

    df = load_results(args.study, all_runs=args.all_runs, status=args.status)
    if args.csv or args.json:
        df = df.drop(columns=["config"])
        if args.csv:
            text = df.to_csv(index=False)
        else:  # json.dumps keeps every float exactly (pandas' to_json rounds to 10 digits)
            from prunelab.io import to_json

            records = df.astype(object).where(df.notna(), None).to_dict(orient="records")
            text = to_json(records) + "\n"
    else:
        cols = ["run_id", "model", "method", "protocol", "target", "seed", "status", "acc", "params", "macs",
                "sparsity", "latency_ms", "duration"]
        view = df[cols].copy()
        view["protocol"] = view["protocol"].fillna("-")
        for col in ("acc", "params", "macs", "sparsity", "latency_ms", "duration"):
            # numbers: a column in which no run reported one holds None objects, which print as 'None'
            view[col] = pd.to_numeric(view[col], errors="coerce")
        if view["latency_ms"].isna().all():
            view = view.drop(columns=["latency_ms"])
        text = view.to_string(index=False, na_rep="-", float_format=lambda v: f"{v:.4g}") + "\n"
    if args.output:
        atomic_write_text(args.output, text)
    else:
        sys.stdout.write(text)
    return 0
