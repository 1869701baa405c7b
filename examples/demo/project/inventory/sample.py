"""A small sample inventory, shared by the tests and the README."""

from __future__ import annotations

from .core import Inventory, Item


def sample_inventory() -> Inventory:
    """Four items; BOLT-1 and NUT-1 are running low."""
    inventory = Inventory()
    inventory.add(Item("WID-1", "Widget", 2.5, quantity=10))
    inventory.add(Item("GAD-1", "Gadget", 12.0, quantity=7))
    inventory.add(Item("BOLT-1", "Bolt", 0.1, quantity=3))
    inventory.add(Item("NUT-1", "Nut", 0.2, quantity=0))
    return inventory
