"""Scenario runner, fault and adversary injection, attacks and reports (DESIGN.md §5)."""
