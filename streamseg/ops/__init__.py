"""Array operations shared by stages (mask encoding, geometry)."""
