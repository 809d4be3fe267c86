"""``python -m grpc_api``: the same as ``moldau serve``."""

import os

# gRPC's core writes some peer-supplied bytes (GOAWAY debug data) to stderr verbatim at its
# default verbosity: a client could write into the broker's log. Errors only, unless the
# operator asks for more. Set before grpc is imported: the core reads it once.
os.environ.setdefault("GRPC_VERBOSITY", "ERROR")

from grpc_api.server import main  # after the environment above

raise SystemExit(main())
