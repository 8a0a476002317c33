"""The Python entry point of the segmentation job: ``segment(options) -> Report``; the command line
(``main``), the demo, the benchmarks and the tests call it.

It is also where the two sides of the job meet: it hands the actor class to the driver, so that neither
imports the other.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

from unet.cli import EXIT_OK
from unet.infer.predict import SAME_PADDED_TTA
from unet.io.cog import check_cog_destination
from unet.io.urls import resolve_storage_options
from unet.job import startup
from unet.job.actor import BlockRunner
from unet.job.cog import write_cogs
from unet.job.driver import run_jobs
from unet.job.options import SegmentOptions, parse_options
from unet.job.prepare import prepare_jobs, provenance, read_checkpoint, resume
from unet.job.report import Report, build_report, check_report_path, print_plan, summary_line, write_report

EXIT_PARTIAL = 3


def segment(options: SegmentOptions) -> Report:
    """Segment every INPUT -> OUTPUT pair of ``options`` (resuming unfinished outputs) and return the
    report; with ``dry_run``, print the plan instead and run nothing. Bad input raises ``UNetError``
    before anything is written."""
    startup.restart()
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    checkpoint = read_checkpoint(options)
    if options.tta > 1 and checkpoint.model.config.padding != "valid":
        print(f"unet: {SAME_PADDED_TTA}", file=sys.stderr)
    jobs = prepare_jobs(options, checkpoint)
    startup.mark("checkpoint and inputs validated")
    if options.dry_run:
        print_plan(jobs, checkpoint.model, options)
        return build_report(jobs, None)
    if options.cog:
        check_cog_destination(options.cog, resolve_storage_options(options.cog, options.storage_options))
    if options.report:
        check_report_path(options.report)
    todo = [job for job in jobs if not job.complete]
    for job in todo:
        resume(job)
    startup.mark("outputs checked")
    stats = run_jobs(todo, options, checkpoint.data, checkpoint.class_names,
                     provenance(options, checkpoint.model, checkpoint.sha256, started), BlockRunner) if todo else None
    for job in jobs:
        if options.cog and not job.failed:
            job.cogs = write_cogs(job, options.cog, options.storage_options)
    report = build_report(jobs, stats)
    if options.report:
        write_report(options.report, report, jobs)
    return report


def main(argv: Sequence[str] | None = None) -> int:
    """The command line: returns the exit code (0 complete, 2 bad input via ``unet.cli.run``, 3 some blocks
    failed)."""
    options = parse_options(sys.argv[1:] if argv is None else argv)
    report = segment(options)
    if options.dry_run:
        return EXIT_OK
    print(summary_line(report), file=sys.stderr)
    return EXIT_PARTIAL if report.failed_blocks else EXIT_OK
