"""Pure analytics: tracking, line crossings, per-interval aggregation."""
