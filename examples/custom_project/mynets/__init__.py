"""A user's own package: the runner imports it by the `_target_` paths in conf/."""
