"""The local backend: Batch AI clusters, jobs and file shares as directories and processes here.

`backend` is the ComputeBackend port (launch and status), `nodes` the clusters and their node
slots, `processes` the node runners as processes, `shares` the FileShare port on directories,
`paths` the data directory's layout and safe names.
"""

from services.backends.local.backend import LocalBackend
from services.backends.local.shares import LocalShare

__all__ = ["LocalBackend", "LocalShare"]
