"""gRPC servicers translating the proto contract to engine calls."""
