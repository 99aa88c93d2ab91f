"""threescale-proxy: 3scale API management as a sidecar reverse proxy behind AWS API Gateway."""

__version__ = "0.1.0"
