"""HTTP routes of the analytics API."""
