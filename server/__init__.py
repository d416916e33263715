"""Coordinator: gRPC servicer, round state machine, aggregation, server optimisers, checkpoints."""
