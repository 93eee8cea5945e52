"""Exit codes, fixed so that cron and Slurm scripts can branch on them."""

OK = 0
#: An unexpected internal error (a bug, or the engine failed).
INTERNAL_ERROR = 1
#: Bad usage or bad input: a missing file, a malformed job line, duplicate ids.
BAD_INPUT = 2
#: The run finished, but some records were skipped or failed (see DIR/skipped.jsonl).
RECORDS_FAILED = 3
#: The run was interrupted (SIGINT/SIGTERM); finished records are saved, re-run to resume.
INTERRUPTED = 75  # EX_TEMPFAIL: "try again later", the conventional requeue signal
