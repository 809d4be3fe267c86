"""``python -m grpc_api``: the same as ``moldau serve``."""

from grpc_api.server import main

raise SystemExit(main())
