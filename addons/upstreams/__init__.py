"""Reaching upstreams: pinned addresses, TLS trust, and JSON answers for upstream faults."""
