"""The network: modules, size arithmetic, config and checkpoints (torch only: no storage, no Ray)."""
