"""The config: every key's declaration (schema.py: type, default, check), the composition of
the YAML groups with the user's overrides and config dirs (compose.py), and the resolvers the
YAML uses (resolvers.py). The start-up pass that checks a whole run needs the model built on
meta and the data loaded, so it lives with the run: runner/run/check.py."""
