"""HTTP: health and metrics, and the Postal-compatible send API."""
