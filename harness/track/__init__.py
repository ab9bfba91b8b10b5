"""The record: MLflow runs with params, protocol, git provenance and artifacts."""
from harness.track.git import git_diff, git_info
from harness.track.store import Tracker, check_server, ensure_store, flatten, is_server

__all__ = ["Tracker", "check_server", "ensure_store", "flatten", "git_diff", "git_info", "is_server"]
