"""Configuration from 3scale: APIcast's service configuration and the admin portal that serves it."""
