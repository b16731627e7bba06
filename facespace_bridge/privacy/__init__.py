"""Privacy controls: what leaves the bridge about whom (docs/privacy.md)."""
