"""`make test`: run the whole trial suite, then print one plain summary line.

Trial's own last line (``PASSED (successes=12)``) is turned into
``trial: 12 passed, 0 failed, 0 skipped`` so that any reader of the log sees
the count. The exit status is trial's.
"""
from __future__ import annotations

import re
import subprocess
import sys


def summarise(last_line: str) -> str | None:
    m = re.match(r"^(PASSED|FAILED) \((.*)\)\s*$", last_line)
    if not m:
        return None
    counts = dict((k, int(v)) for k, v in re.findall(r"(\w+)=(\d+)", m.group(2)))
    passed = counts.get("successes", 0)
    failed = sum(counts.get(k, 0) for k in ("failures", "errors", "unexpectedSuccesses"))
    skipped = counts.get("skips", 0) + counts.get("expectedFailures", 0)
    return f"trial: {passed} passed, {failed} failed, {skipped} skipped"


def run_trial(args: list[str]) -> int:
    proc = subprocess.Popen([sys.executable, "-m", "twisted.trial", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    last = ""
    for line in proc.stdout:
        sys.stdout.buffer.write(line)
        sys.stdout.flush()
        if line.strip():
            last = line.decode("utf-8", "replace")
    code = proc.wait()
    summary = summarise(last)
    if summary:
        print(summary, flush=True)
    return code


def main(argv: list[str]) -> int:
    return run_trial(argv or ["tests"])


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
