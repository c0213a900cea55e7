"""A user's `--config-dir` wins over schedlab's own conf/: their `model/mlp.yaml` or
`config.yaml` is the file used, as they meant. Hydra searches a `--config-dir` after the
app's config dir and takes the first match, so without this a file of the same name as a
built-in is silently never read. The dirs come from the command being composed
(runner.config.compose.searched_first); Hydra's own copy of the entry, after conf/, then
finds nothing the first one has not. They go after Hydra's pkg://hydra.conf, so Hydra's
own groups stay its own.
"""

from hydra.core.config_search_path import ConfigSearchPath, SearchPathQuery
from hydra.plugins.search_path_plugin import SearchPathPlugin

from runner.config.compose import USER_DIRS

PROVIDER = "schedlab --config-dir"


class UserConfigDirsFirst(SearchPathPlugin):
    def manipulate_search_path(self, search_path: ConfigSearchPath) -> None:
        for path in USER_DIRS:  # in the order given: the first dir named wins
            search_path.prepend(PROVIDER, f"file://{path}", anchor=SearchPathQuery("main"))
