"""The contract of every error a user of TopChef can see.

The class lives at the bottom of the package, in ``broker.errors``, beside the
one error root that implements it, so that settings and connections can raise
TopChef errors without depending on the models; the seed's import path stays.
"""

from broker.errors import APIError

__all__ = ["APIError"]
