"""The bottom layer: errors, the plug-in registry, hashing, files, versions, statistics, figures.

Nothing here imports anything else from ``harness`` (``tests/test_layers.py`` checks it), so
every other layer can use it and it can be imported and tested alone.
"""
