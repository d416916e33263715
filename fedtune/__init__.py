"""fedtune: privacy-preserving federated fine-tuning over gRPC.

The import package maps the repository's top-level folders (DESIGN.md §2): ``fedtune.server``
(coordinator), ``fedtune.client`` (site agent), ``fedtune.privacy`` (pure privacy library),
``fedtune.proto`` (wire protocol) and ``fedtune.scenarios`` (scenario runner).
"""

__version__ = "0.1.0"
