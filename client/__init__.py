"""Site agent: gRPC client, policy guard, local trainer, data loaders."""
