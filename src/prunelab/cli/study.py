"""``prunelab study run | status | validate``: run a study spec, see where it stands, check a spec."""

from __future__ import annotations

import sys

from prunelab.errors import PrunelabError


def add_arguments(parser) -> None:
    from prunelab.cli import ArgumentParser

    sub = parser.add_subparsers(dest="action", metavar="ACTION", parser_class=ArgumentParser)
    run = sub.add_parser("run", help="run (or resume) every unfinished run of a study spec",
                         description="Run a study spec; re-running resumes: finished runs are skipped.")
    run.add_argument("spec", metavar="SPEC.yaml")
    run.add_argument("--out", metavar="DIR", default=None, help="study folder (default: studies/<name>)")
    run.add_argument("--executor", choices=("local", "process", "ray", "torchrun"), default="local",
                     help="local: in this process (a process pool with --workers > 1); process; ray; torchrun: "
                          "each run data-parallel on --nproc-per-node processes")
    run.add_argument("--nproc-per-node", type=int, default=2, metavar="N",
                     help="processes per run with --executor torchrun (one per GPU; default 2)")
    run.add_argument("--workers", type=int, default=1,
                     help="runs executed at once (at most 4 processes per CPU of this machine, with torchrun "
                          "counting --nproc-per-node each; any number with --executor ray)")
    run.add_argument("--threads", type=int, default=None,
                     help="torch threads per run (default 1: the numbers then do not depend on --workers)")
    run.add_argument("--ray-address", default=None, help="Ray cluster address (default: RAY_ADDRESS or local)")
    run.add_argument("--update", action="store_true",
                     help="accept an edited spec: add its new runs to the existing store")
    run.add_argument("--no-retry-failed", dest="retry_failed", action="store_false",
                     help="leave runs that failed before as failed")
    run.add_argument("--report", action="store_true", help="write the report when the runs are done")
    run.add_argument("--tracker", default=None, metavar="NAME",
                     help="log every finished run to a tracker: tensorboard or mlflow (overrides the spec's)")
    run.add_argument("--tracker-dir", default=None, metavar="DIR",
                     help="the tracker's folder (default: <study>/tracking/<tracker>)")
    run.add_argument("--progress", dest="progress", action="store_true", default=None,
                     help="show the live display even when stderr is not a terminal")
    run.add_argument("--quiet", dest="progress", action="store_false", help="no live display")

    status = sub.add_parser("status", help="runs done / running / failed of a study",
                            description="Show how far a study is, the runs in progress and the failures.")
    status.add_argument("study", metavar="STUDY", help="study folder, its results.db, or the spec YAML")
    status.add_argument("--json", action="store_true")

    validate = sub.add_parser("validate", help="check a study spec without running anything",
                              description="Check a study spec: names, targets, combinations, and that its "
                                          "data and cache folder are usable on this machine. No code from the "
                                          "spec runs: its plugins are found but not imported, so the methods "
                                          "of kinds they register are listed as not checked.")
    validate.add_argument("spec", metavar="SPEC.yaml")
    validate.add_argument("--list", action="store_true", help="list the runs it expands to")
    validate.add_argument("--no-data-check", dest="data_check", action="store_false",
                          help="do not require the data root to exist here, the cache folder to be usable, nor "
                               "the models to fit in this machine's memory (a spec for another machine)")


def run(args) -> int:
    if args.action is None:
        raise PrunelabError("missing action; valid choices: run, status, validate")
    return {"run": _run, "status": _status, "validate": _validate}[args.action](args)


def _run(args) -> int:
    from prunelab.study import run_study

    if args.workers < 1:
        raise PrunelabError(f"--workers must be >= 1, got {args.workers}")
    if args.report:
        from prunelab.cli.report import check_report_extras

        check_report_extras()
    if args.tracker is not None:
        from prunelab.track import check_tracker

        check_tracker(args.tracker)
    result = run_study(args.spec, out=args.out, executor=args.executor, workers=args.workers,
                       update=args.update, retry_failed=args.retry_failed, progress=args.progress,
                       threads=args.threads, ray_address=args.ray_address,
                       nproc_per_node=args.nproc_per_node, tracker=args.tracker, tracker_dir=args.tracker_dir)
    report = None
    if args.report:  # the runner writes no report: the report reads the finished store
        from prunelab.report import write_report

        report = write_report(result.store_path, result.out_dir / "report").markdown
    c = result.counts
    print(f"study {result.name}: {c['done']} done, {c['failed']} failed, {c['pending'] + c['running']} unfinished "
          f"({result.executed} executed now); results in {result.store_path}")
    for label, error in result.failures:
        print(f"  failed: {label}: {error}", file=sys.stderr)
    if result.tracking_dir is not None:
        print(f"tracker: {result.tracked} runs in {result.tracking_dir}")
    if report is not None:
        print(f"report: {report}")
    return 0 if result.ok else 1


def _status(args) -> int:
    from prunelab.cli.common import emit_json
    from prunelab.study import study_status

    status = study_status(args.study)
    if args.json:
        emit_json(status)
        return 0
    c = status["counts"]
    print(f"study {status['name']} ({status['store']}): {sum(c.values())} runs: {c['done']} done, "
          f"{c['running']} running, {c['failed']} failed, {c['pending']} pending")
    for r in status["running"]:
        p = r["progress"] or {}
        epoch = f" epoch {p['epoch']}/{p.get('epochs', '?')}" if "epoch" in p else ""
        print(f"  running {r['run_id']} {r['model']} / {r['method']} / {r['target']} / {r['protocol'] or '-'} / "
              f"seed {r['seed']}{epoch} (worker {r['worker']}, heartbeat {r['heartbeat_age_s']} s ago)")
    for r in status["failed"]:
        print(f"  failed  {r['run_id']} {r['model']} / {r['method']} / {r['target']} / {r['protocol'] or '-'} / "
              f"seed {r['seed']}: {r['error']}")
    return 0


def _validate(args) -> int:
    from collections import Counter

    from prunelab.study import load_spec

    spec = load_spec(args.spec, import_user_code=False)
    missing = (spec.missing_data_root() or spec.unusable_cache() or spec.oversized_model()) if args.data_check \
        else None
    if missing:
        raise PrunelabError(f"{args.spec}: {missing}; pass --no-data-check to check a spec for another machine")
    runs = spec.expand()
    by_method = Counter(r.method for r in runs)
    print(f"{args.spec}: ok: study {spec.name!r}, {len(runs)} runs (" +
          ", ".join(f"{m} {n}" for m, n in by_method.items()) + ")"
          + (f", {len(spec.claims)} claims" if spec.claims else ""))
    if spec.plugins:
        print(f"  plugins {', '.join(spec.plugins)}: found, not imported (validate runs no code from the spec; "
              f"study run imports them)")
    if spec.unchecked:
        print(f"  not checked: method(s) {', '.join(spec.unchecked)}, of kinds no imported module registers "
              f"(from the plugins)")
    if args.list:
        for r in runs:
            print(f"  {r.run_id}  {r.label}")
    return 0
