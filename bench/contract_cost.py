"""The worst validation a schema may cost, at the limits of ``broker.contract``.

``python -m bench.contract_cost``: first each pattern, the text it reads (the
most its weight allows, or 1 MiB), and the slowest of five validations; then
``items: allOf [k subschemas]`` over as many items as the evaluation budget
allows (``broker.contract.references``), the fastest of three.
"""

from __future__ import annotations

import contextlib
import random
import time

from broker.contract import Contract
from broker.contract.patterns import BASE_WEIGHT, MAX_WORK, pattern_weight
from broker.contract.references import MAX_EVALUATIONS, evaluations
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
    for k in (10, 100, 1000, 10000):
        schema = {"type": "array", "items": {"allOf": [{"minimum": -i} for i in range(k)]}}
        contract = Contract(schema)
        items = [0] * ((MAX_EVALUATIONS - 1) // evaluations(schema).profile[1])
        best = min(_timed(contract, items) for _ in range(3))
        print(f"allOf of {k:<6} {len(items):>9} items  best  {best * 1000:7.1f} ms")


def _timed(contract: Contract, payload: object) -> float:
    start = time.perf_counter()
    contract.validate(payload)
    return time.perf_counter() - start


if __name__ == "__main__":
    main()
