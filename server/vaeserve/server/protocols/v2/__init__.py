"""The Open Inference Protocol (KServe V2): gRPC servicer and HTTP routes over one data plane."""
