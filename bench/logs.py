"""Progress lines on stderr, with the time, so the table on stdout stays clean."""

import sys
import time


def log(text: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {text}", file=sys.stderr, flush=True)
