"""Opening a `runtime execute` job, one way for one process and for a Ray cluster.

`open_job(options, context, model_name)` scans the whole input (`scan_input`), says which lines are skipped
or answered with error records, opens the output (`JobOutput.open`: same input and plan, so resume), says so
when resuming, writes the recorded error lines not yet written and yields `(job, scan)`; `job` is None when
every request is already answered ("nothing to do"). `options` has the `ExecuteOptions` fields it reads.
"""

from __future__ import annotations

import hashlib
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from runtime.jobio.input_file import InputScan, scan_input
from runtime.jobio.requests import ParseContext
from runtime.jobio.writer import JobIdentity, JobOutput

if TYPE_CHECKING:
    from runtime.commands.execute_options import ExecuteOptions


def file_sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@contextmanager
def open_job(
    options: ExecuteOptions, context: ParseContext, model_name: str, warn_capped: bool = False
) -> Iterator[tuple[JobOutput | None, InputScan]]:
    scan = scan_input(options.input, context, options.on_error)
    recorded = scan.skipped if options.on_error == "record" else []
    identity = JobIdentity(scan.sha256, file_sha256(options.plan), scan.num_requests + len(recorded))
    say = (lambda *_: None) if options.quiet else (lambda text: print(text, file=sys.stderr))
    for skipped in scan.skipped:
        verb = "answering with an error record" if recorded else "skipping"
        say(f"{verb} {options.input}, line {skipped.line_number}: {skipped.reason}")
    if warn_capped and scan.capped_requests:
        print(
            f"warning: {scan.capped_requests} of {scan.num_requests} requests ask for more tokens than "
            f"{context.token_limit_text} can hold; their max_tokens is capped to fit and they end with "
            'finish_reason "length" (capped_requests in the report)',
            file=sys.stderr,
        )
    with JobOutput.open(options.output, identity, overwrite=options.overwrite, model_name=model_name) as job:
        if job.num_done:
            say(
                f"resuming {options.output}: {job.num_done} of {identity.num_requests} lines already answered"
            )
        for skipped in recorded:
            if skipped.key not in job.done_keys:
                job.write_error(skipped)
        if job.num_done >= identity.num_requests:
            say(f"nothing to do: every request in {options.input} is answered in {options.output}")
            yield None, scan
        else:
            yield job, scan
