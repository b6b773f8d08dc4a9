"""vaeserve.api.v1.VaeService: the servicer and its named conversions."""
