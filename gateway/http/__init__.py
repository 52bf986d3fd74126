"""The HTTP side: routes, the SSE response, the protocol's limits, the access log and the publish rate."""
