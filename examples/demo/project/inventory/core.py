"""Core data model: items and the inventory that holds them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator


@dataclass
class Item:
    """A stock-keeping unit with a unit price and a quantity on hand."""

    sku: str
    name: str
    price: float
    quantity: int = 0


class Inventory:
    """A collection of items keyed by SKU; iteration is sorted by SKU."""

    def __init__(self) -> None:
        self._items: dict[str, Item] = {}

    def add(self, item: Item) -> None:
        """Add a new item. Raises ValueError for a duplicate SKU or a negative quantity."""
        if item.sku in self._items:
            raise ValueError(f"duplicate sku: {item.sku}")
        if item.quantity < 0:
            raise ValueError(f"quantity must be >= 0, got {item.quantity}")
        self._items[item.sku] = item

    def get(self, sku: str) -> Item:
        """The item with this SKU. Raises KeyError for an unknown SKU."""
        try:
            return self._items[sku]
        except KeyError:
            raise KeyError(f"unknown sku: {sku}") from None

    def remove(self, sku: str, quantity: int) -> None:
        """Take `quantity` units of `sku` out of stock."""
        item = self.get(sku)
        if quantity <= 0:
            raise ValueError(f"quantity must be > 0, got {quantity}")
        if quantity > item.quantity:
            raise ValueError(f"not enough {sku}: have {item.quantity}, want {quantity}")
        item.quantity -= quantity

    def total_value(self) -> float:
        """The value of everything in stock (price x quantity, summed)."""
        return sum(item.price * item.quantity for item in self._items.values())

    def __iter__(self) -> Iterator[Item]:
        return iter(sorted(self._items.values(), key=lambda item: item.sku))

    def __len__(self) -> int:
        return len(self._items)

    def __contains__(self, sku: object) -> bool:
        return sku in self._items
