"""Plain-text reports."""

from __future__ import annotations

from .core import Inventory


def format_price(value: float) -> str:
    """Format an amount of money for display."""
    return f"${value}"


def stock_report(inventory: Inventory) -> str:
    """One line per item (sorted by SKU), then a TOTAL line."""
    lines = [
        f"{item.sku:<8} {item.name:<16} {item.quantity:>5} x {format_price(item.price)}"
        for item in inventory
    ]
    lines.append(f"TOTAL {format_price(inventory.total_value())}")
    return "\n".join(lines)
