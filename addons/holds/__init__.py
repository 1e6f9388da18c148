"""Holding requests for human approval.

``spec`` (the rule fields), ``binding`` (what an approval is bound to, what reviewers
see), ``book`` (the state machine, plain data, no mitmproxy) over ``store`` (the backend
seam, memory by default), ``desk`` (the one thread-safe way in, for the review UI),
``addon`` (adapts flows to the book) and ``notify`` (webhooks).
"""
