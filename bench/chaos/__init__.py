"""TopChef's own chaos suite: real processes, injected faults, an independent ledger.

``python -m bench.chaos`` runs each scenario against servers it owns (a
persistent redis-server and a private PostgreSQL cluster) and judges the
broker by what the instruments themselves saw (``bench.chaos.ledger``), not by
what the broker says of itself.
"""
