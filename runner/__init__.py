"""schedlab's runner: `python -m runner` trains one configuration (or a Hydra sweep of them)."""

from runner.resolvers import register as _register_resolvers

_register_resolvers()
