"""The HTTP face: one hypercorn (trio worker) port for metrics, health and, later, WS and JSON."""
