"""``python -m broker`` is the ``topchef`` command."""

from broker.cli import main

main()
