"""Which blocks are compressed and how they are grouped (SPEC §2)."""
