"""fedtune.v1 wire protocol: the ``.proto`` source and its committed generated stubs."""
