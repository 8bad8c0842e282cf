"""``convforge db``: move tuning records between convforge's database and TVM's.

``convforge db export --format metaschedule DIR`` writes every measured record of the
tuning database (``--db``, default ``$CONVFORGE_TUNING_DB``) as a TVM MetaSchedule
``JSONDatabase`` in DIR (``database_workload.json``, ``database_tuning_record.json``): a TVM
user applies them with ``ms.database.JSONDatabase(work_dir=DIR)`` and
``ms.tir_integration.compile_tir`` or relax's ``MetaScheduleApplyDatabase``.
``convforge db import --format metaschedule DIR`` reads such a database (one TVM's own
tuning wrote, too) into convforge's, each record under its own target; the default
schedule of each imported workload for this machine's target is measured (``--no-measure``
skips it), since a record is applied only where it beats the default.
"""

from __future__ import annotations

import argparse
import json
import os

from convforge.commands._model_args import add_db_argument, checked_db
from convforge.schedules import tuning
from convforge.targets import resolve_target, target_key

HELP = "export or import tuning records as a TVM MetaSchedule JSON database"

FORMATS = ("metaschedule",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "action", choices=("export", "import"),
        help="export: convforge's records -> DIR; import: DIR's records -> convforge's",
    )  # fmt: skip
    parser.add_argument("directory", metavar="DIR", help="the MetaSchedule database folder")
    parser.add_argument(
        "--format", choices=FORMATS, required=True,
        help="metaschedule: database_workload.json + database_tuning_record.json "
        "(tvm.s_tir.meta_schedule.database.JSONDatabase)",
    )  # fmt: skip
    add_db_argument(parser, "convforge tuning database directory")
    parser.add_argument(
        "--target", help="import: the target whose defaults are measured (default: this CPU)"
    )
    parser.add_argument(
        "--no-measure", action="store_true",
        help="import: do not measure the default schedules (records apply once "
        "'convforge tune --trials 0' has measured them)",
    )  # fmt: skip
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")


def run(args: argparse.Namespace) -> int:
    checked_db(args)
    if args.action == "export":
        if not os.path.isdir(args.db):
            raise ValueError(f"--db: no such directory {args.db!r}")
        done = tuning.export_metaschedule(args.db, args.directory)
        result = {
            "directory": str(done.directory), "workloads": done.workloads,
            "records": done.records, "skipped": done.skipped,
        }  # fmt: skip
        text = (
            f"wrote {done.records} records of {done.workloads} workloads to {done.directory} "
            f"({done.skipped} failed or unreadable records left out)"
        )
    else:
        if not args.no_measure:
            tuning.require_tuning_extra()
        here = None if args.no_measure else resolve_target(args.target)
        done = tuning.import_metaschedule(args.directory, args.db, measure_on=here)
        result = {
            "records": done.records, "added": done.added, "measured": done.measured,
            "unmeasured": done.unmeasured, "targets": done.targets,
        }  # fmt: skip
        lines = [
            f"imported {done.added} new of {done.records} records into {args.db}; "
            f"{done.measured} workloads' default schedules measured here"
        ]
        if done.unmeasured:
            lines.append(
                f"{done.unmeasured} workloads' defaults are not measured (another target, or "
                f"--no-measure): their records apply once 'convforge tune --trials 0' has run "
                f"for them on their target"
            )
        if here is not None:
            others = sorted(k for k in done.targets if k != target_key(here))
            lines += [f"records for another target: {k}" for k in others]
        text = "\n".join(lines)
    print(json.dumps(result) if args.json else text, flush=True)
    return 0
