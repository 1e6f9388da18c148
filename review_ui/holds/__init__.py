"""Deciding held requests: the queue, the review page, decisions and grants, the JSON API, the live feed."""
