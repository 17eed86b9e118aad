"""Open-file limit: a web process holds one socket per waiting client and a worker one upstream
connection (and, on SQLite, three files) per busy thread, thousands in all, where the usual
soft limit is 1,024. Every process raises its soft limit to the hard one (the hard limit is the
administrator's choice and is left alone)."""

from __future__ import annotations

import resource

CAP = 1 << 20


def raise_open_files_limit() -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = CAP if hard == resource.RLIM_INFINITY else min(hard, CAP)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass
