"""Quotas and token buckets arrive with the rate-limit issue; the app exists so the layout and
migrations are in place."""
