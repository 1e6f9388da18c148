"""Portcullis's mitmproxy addons and the rule engine beside them."""

import logging

# mitmproxy's log handler sits on the root logger, whose level filters out INFO;
# operators need to see rule reloads, holds and decisions.
logging.getLogger("portcullis").setLevel(logging.INFO)
