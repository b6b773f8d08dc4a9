"""vaeserve.server: the gRPC service that serves a VAE model bundle."""
