"""The record: MLflow runs with params, protocol, git provenance and artifacts."""
from harness.track.git import git_diff, git_info
from harness.track.store import Tracker, ensure_store, flatten

__all__ = ["Tracker", "ensure_store", "flatten", "git_diff", "git_info"]
