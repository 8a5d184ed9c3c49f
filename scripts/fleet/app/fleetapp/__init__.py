"""fieldtune's fleet demo ServerApp."""
