"""Summarise a py-spy raw (collapsed) profile: where the server's samples go.

    python -m bench.profile FILE [--top 25]

Prints the samples per thread, the functions with the most self samples
(where the time is spent, C calls included in their Python caller), the
functions with the most inclusive samples (what the time is spent for), and
a rough breakdown by concern (TLS, logging, store, ...).
"""
from __future__ import annotations

import argparse
import re
import sys
from collections import Counter

#: (concern, regular expression on one frame), first match from the leaf up wins
CONCERNS = [
    ("sqlite (execute/commit/fsync)", r"^(_drive|Cursor\.|Connection\.|_configure) .*store"),
    ("sqlite (adbapi thread plumbing)", r"twisted/(enterprise/adbapi|_threads|python/threadpool)"),
    ("logging", r"twisted/(logger/|python/logfile\.py)|_log \(mailgw"),
    ("TLS (OpenSSL + TLSMemoryBIO)", r"twisted/protocols/tls\.py|OpenSSL/|_sslverify"),
    ("store logic (mailgw/store)", r"mailgw/store/"),
    ("SMTP protocol (mailgw/smtp)", r"mailgw/smtp/"),
    ("auth (mailgw/auth, cred)", r"mailgw/auth/|twisted/cred/"),
    ("Deferred machinery", r"twisted/internet/defer\.py"),
    ("reactor / sockets", r"twisted/internet/"),
]


def read(path: str):
    stacks = Counter()
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            stack, _, count = line.rpartition(" ")
            if stack and count.isdigit():
                stacks[stack] += int(count)
    return stacks


def _function(frame: str) -> str:
    """C{name (file:line)} without the line, so a function counts once."""
    return re.sub(r":\d+\)$", ")", frame.strip())


def summarise(stacks: Counter, top: int = 25) -> str:
    total = sum(stacks.values()) or 1
    threads, leaf, inclusive, concerns = Counter(), Counter(), Counter(), Counter()
    for stack, count in stacks.items():
        frames = stack.split(";")
        name = "?"
        if frames[0].startswith("thread"):
            name = ("reactor thread" if "MainThread" in frames[0]
                    else "worker threads (adbapi)")
            frames = frames[1:]
        threads[name] += count
        functions = [_function(f) for f in frames]
        if functions:
            leaf[functions[-1]] += count
        for fn in set(functions):
            inclusive[fn] += count
        concerns[_concern(frames)] += count

    def pct(n):
        return f"{100 * n / total:5.1f}%"

    out = [f"{total} samples"]
    out += [f"  {pct(n)}  {name}" for name, n in threads.most_common()]
    out.append("by concern (innermost match):")
    out += [f"  {pct(n)}  {name}" for name, n in concerns.most_common()]
    out.append(f"top {top} self:")
    out += [f"  {pct(n)}  {name}" for name, n in leaf.most_common(top)]
    out.append(f"top {top} inclusive (mailgw and twisted frames):")
    shown = [(fn, n) for fn, n in inclusive.most_common()
             if "mailgw/" in fn or "twisted/" in fn or "sqlite" in fn.lower()]
    skip = ("mainLoop", "doPoll", "run (", "startReactor", "runApp", "callWithContext",
            "callWithLogger", "runReactorWithLogging", "postApplication", "<module>",
            "_doReadOrWrite", "ReactorBase.run")
    shown = [(fn, n) for fn, n in shown if not any(s in fn for s in skip)]
    out += [f"  {pct(n)}  {fn}" for fn, n in shown[:top]]
    return "\n".join(out)


def _concern(frames) -> str:
    for frame in reversed(frames):
        for name, pattern in CONCERNS:
            if re.search(pattern, frame):
                return name
    return "other"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.profile")
    parser.add_argument("files", nargs="+")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    for path in args.files:
        print(f"== {path}")
        print(summarise(read(path), args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
