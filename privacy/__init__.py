"""Pure privacy library: no I/O, no gRPC, no global random state (DESIGN.md §2)."""
