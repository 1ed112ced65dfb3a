#!/usr/bin/env python3
"""Instructions per request of each function in a callgrind dump.

usage: benches/callgrind_functions.py DUMP REQUESTS [TOP]

DUMP is a file `benches/instructions.py --profile DUMP` kept (the large
load), REQUESTS the requests of that load (30 000 at pipeline 1, 150 000
at pipeline 16 by default). Each function's own instructions (code inlined
into it included, callees not) are divided by REQUESTS; the TOP (default
40) largest are printed. callgrind_annotate 3.19 puts every exclusive
count of these dumps on `__libc_start_main`, hence this reader.
"""
import collections
import re
import sys


def main():
    if len(sys.argv) < 3:
        sys.exit(__doc__)
    path, requests = sys.argv[1], float(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 40
    names = {}
    cost = collections.Counter()
    function = None
    after_calls = False

    def name(text):
        # `(id) name` defines a compressed name, `(id)` reuses it.
        m = re.match(r"\((\d+)\)(?: (.*))?", text)
        if not m:
            return text
        if m.group(2):
            names[m.group(1)] = m.group(2)
        return names.get(m.group(1), text)

    with open(path) as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("fn="):
                function = name(line[3:])
            elif line.startswith("cfn="):
                name(line[4:])
            elif line.startswith("calls="):
                # The next cost line is the call's inclusive cost.
                after_calls = True
            elif line and (line[0].isdigit() or line[0] in "+-*"):
                fields = line.split()
                if after_calls:
                    after_calls = False
                elif len(fields) >= 2 and function:
                    cost[function] += int(fields[1])
    print(f"{sum(cost.values()) / requests:8.1f}  total")
    for function, c in cost.most_common(top):
        print(f"{c / requests:8.1f}  {function[:150]}")


if __name__ == "__main__":
    main()
