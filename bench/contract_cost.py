"""The worst validation a schema's patterns may cost, at the limits of ``broker.contract.patterns``.

``python -m bench.contract_cost``: each line is a pattern, the text it reads
(the most its weight allows, or 1 MiB), and the slowest of five validations.
"""

from __future__ import annotations

import contextlib
import random
import time

from broker.contract import Contract
from broker.contract.patterns import BASE_WEIGHT, MAX_WORK, pattern_weight
from broker.errors import DeserializationError

#: Patterns at the weight limit, and the text that costs each the most.
CASES = [
    ("a[ab]{998}c", lambda n: "".join(random.Random(7).choice("ab") for _ in range(n))),
    ("a[ab]{998}c", lambda n: "".join(random.Random(7).choice("aaabbbc") for _ in range(n))),
    ("a[ab]{998}", lambda n: "".join(random.Random(7).choice("abc") for _ in range(n))),
    ("a{1000}", lambda n: ("a" * 999 + "b") * (n // 1000)),
    ("(a|b){499}c", lambda n: "a" * n),
    ("[0-9a-f]{64}", lambda n: ("0" * 63 + "x") * (n // 64)),
    ("^a+$", lambda n: "a" * n + "b"),
]


def main() -> None:
    for pattern, text_of in CASES:
        contract = Contract({"type": "string", "pattern": pattern})
        length = min(MAX_WORK // (pattern_weight(pattern) + BASE_WEIGHT), 1_000_000)
        text = text_of(length)[:length]
        worst = 0.0
        for _ in range(5):
            start = time.perf_counter()
            with contextlib.suppress(DeserializationError):
                contract.validate(text)
            worst = max(worst, time.perf_counter() - start)
        print(f"{pattern:16} {len(text):>9} bytes  worst {worst * 1000:7.1f} ms")


if __name__ == "__main__":
    main()
