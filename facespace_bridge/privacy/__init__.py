"""Privacy controls: whose sightings leave the bridge (docs/privacy.md)."""
