"""The gRPC face: grpclib hosted in trio through trio-asyncio.

The one place that knows grpclib and trio-asyncio. Handlers hop into trio once per call.
"""
