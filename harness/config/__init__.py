"""One config tree (Hydra compose API behind our CLI) and its validation: ``load(overrides)`` is the entry point.

``compose`` builds the resolved tree from ``harness/conf/``; ``validate`` checks every node against
its schema (:mod:`harness.config.schema`) or, for plug-in nodes, against the signature of what the
registry holds under its name, so the config layer validates methods, datasets and launchers
without importing any of them.
"""
from harness.config.compose import (CONF_DIR, GROUPS, PLUGIN_NODES, check_plugin_node, compose, config_nodes, hydra_value,
                                    load, options, plugin_signature, validate)

__all__ = ["CONF_DIR", "GROUPS", "PLUGIN_NODES", "check_plugin_node", "compose", "config_nodes", "hydra_value", "load", "options",
           "plugin_signature", "validate"]
