"""analytics_api package."""
