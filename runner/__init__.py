"""schedlab's runner: `python -m runner` trains one configuration (or a Hydra sweep of them)."""

from runner.config.resolvers import register as _register_resolvers

_register_resolvers()
