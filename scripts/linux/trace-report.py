#!/usr/bin/env python3
"""Summarise a lunavm exit trace (`lunavm run --trace FILE`, JSON lines) of a
Linux boot: where the kicks that moved virtual time happened, by kernel
function (symbolised with System.map), and when (exit index and virtual
time, relative to console lines the trace itself carries: every byte the
guest wrote to the UART's data port 0x3f8).

    scripts/linux/trace-report.py TRACE.jsonl [System.map] [--marker TEXT]...
    scripts/linux/trace-report.py --diff A.jsonl B.jsonl [System.map]

--diff names the first record where two traces differ, with both RIPs
symbolised and the console line that was being printed there.
"""
import bisect
import json
import os
import sys
from collections import Counter


# Records of exits the guest caused (what --max-exits counts); the others
# (interrupts lunavm injected, kicks, spin waits) are lunavm's.
GUEST_CAUSED = {"pio_in", "pio_out", "mmio_read", "mmio_write", "ucall", "hlt", "completion"}


def load_map(path):
    addrs, names = [], []
    with open(path) as f:
        for line in f:
            parts = line.split()
            if len(parts) < 3 or parts[1] not in "tTwW":
                continue
            addrs.append(int(parts[0], 16))
            names.append(parts[2])
    order = sorted(range(len(addrs)), key=addrs.__getitem__)
    return [addrs[i] for i in order], [names[i] for i in order]


def symbolise(table, rip):
    if table is None or rip < 0xFFFF800000000000:
        return "user" if rip < 0x800000000000 else hex(rip)
    addrs, names = table
    i = bisect.bisect_right(addrs, rip) - 1
    return f"{names[i]}+{rip - addrs[i]:#x}" if i >= 0 else hex(rip)


def function(table, rip):
    return symbolise(table, rip).split("+")[0]


def load(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def console_lines(trace):
    """(exit index where the line ends, the line) for each console line."""
    lines, cur = [], bytearray()
    for i, r in enumerate(trace):
        if r["kind"] == "pio_out" and r["addr"] == 0x3F8:
            c = r["value"] & 0xFF
            if c == 10:
                lines.append((i, cur.decode(errors="replace").rstrip("\r")))
                cur = bytearray()
            else:
                cur.append(c)
    return lines


def line_at(lines, index):
    ends = [e for e, _ in lines]
    j = bisect.bisect_left(ends, index)
    before = lines[j - 1][1] if j > 0 else "(start)"
    return before


def report(trace, table, markers):
    kicks = [(i, r) for i, r in enumerate(trace) if r["kind"] == "kick"]
    lines = console_lines(trace)
    last = trace[-1]["time_ns"] if trace else 0
    print(f"{len(trace)} records, {len(kicks)} kicks that moved virtual time, "
          f"virtual time {last / 1e9:.3f} s")
    for m in markers:
        hit = next(((e, l) for e, l in lines if m in l), None)
        if hit is None:
            print(f"marker {m!r}: not reached")
            continue
        e = hit[0]
        n = sum(1 for i, _ in kicks if i <= e)
        exits = sum(1 for r in trace[: e + 1] if r["kind"] in GUEST_CAUSED)
        print(f"marker {m!r}: record #{e}, guest exit {exits} (--max-exits {exits} "
              f"stops right after it), {trace[e]['time_ns'] / 1e9:.3f} s virtual, "
              f"{n} kicks before it")
    jumped = Counter()
    by_fn = Counter()
    for i, r in kicks:
        f = function(table, r["rip"])
        by_fn[f] += 1
        jumped[f] += r["value"] - r["time_ns"]
    print("kicks by function (count, virtual time they jumped):")
    for f, n in by_fn.most_common():
        print(f"  {n:6d}  {jumped[f] / 1e6:9.1f} ms  {f}")
    print("kicks by the console line printed before them:")
    phase = Counter(line_at(lines, i) for i, _ in kicks)
    for l, n in sorted(phase.items(), key=lambda x: -x[1])[:25]:
        print(f"  {n:6d}  {l[:100]}")


def diff(a, b, table):
    n = min(len(a), len(b))
    i = next((k for k in range(n) if a[k] != b[k]), n)
    if i == n and len(a) == len(b):
        print(f"identical: {len(a)} records")
        return
    lines = console_lines(a[: i + 1])
    print(f"first difference at record #{i} (of {len(a)} and {len(b)}); "
          f"last console line before it: {lines[-1][1] if lines else '(none)'!r}")
    for name, t in (("A", a), ("B", b)):
        for k in range(max(0, i - 3), min(len(t), i + 2)):
            r = t[k]
            print(f"  {name} #{k}: {r['kind']} addr {r['addr']:#x} value {r['value']:#x} "
                  f"t {r['time_ns']} rip {symbolise(table, r['rip'])}")
    ka = sum(1 for r in a[:i] if r["kind"] == "kick")
    kb = sum(1 for r in b[:i] if r["kind"] == "kick")
    print(f"kicks before it: A {ka}, B {kb}")


def main(argv):
    markers, args = [], []
    it = iter(argv)
    for a in it:
        if a == "--marker":
            markers.append(next(it))
        else:
            args.append(a)
    if args and args[0] == "--diff":
        table = load_map(args[3]) if len(args) > 3 else None
        diff(load(args[1]), load(args[2]), table)
        return 0
    if not args:
        print(__doc__)
        return 2
    table = load_map(args[1]) if len(args) > 1 else None
    report(load(args[0]), table, markers or ["Run /init as init process"])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
