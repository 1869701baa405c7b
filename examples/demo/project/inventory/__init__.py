"""inventory: a tiny stock-keeping library (standard library only)."""

from .core import Inventory, Item
from .report import format_price, stock_report

__all__ = ["Inventory", "Item", "format_price", "stock_report"]
