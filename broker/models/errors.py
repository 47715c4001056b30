"""The seed's import path for TopChef's errors; they live in ``broker.errors``.

The errors sit at the bottom of the package (settings, connections and the
contract raise them and must not depend on the models); this module keeps
``from broker.models.errors import ...`` working for code written against the seed.
"""

from broker.errors import *  # noqa: F403
from broker.errors import __all__ as __all__
