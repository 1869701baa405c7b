import unittest

from inventory import Inventory, Item
from inventory.sample import sample_inventory


class InventoryTest(unittest.TestCase):
    def test_add_and_get(self):
        inventory = Inventory()
        inventory.add(Item("A-1", "Apple", 0.5, quantity=4))
        self.assertEqual(inventory.get("A-1").quantity, 4)
        self.assertIn("A-1", inventory)
        self.assertEqual(len(inventory), 1)

    def test_duplicate_sku_is_rejected(self):
        inventory = sample_inventory()
        with self.assertRaises(ValueError):
            inventory.add(Item("WID-1", "Another widget", 1.0))

    def test_unknown_sku(self):
        with self.assertRaises(KeyError):
            sample_inventory().get("NOPE")

    def test_remove(self):
        inventory = sample_inventory()
        inventory.remove("WID-1", 4)
        self.assertEqual(inventory.get("WID-1").quantity, 6)

    def test_cannot_remove_more_than_in_stock(self):
        inventory = sample_inventory()
        with self.assertRaises(ValueError):
            inventory.remove("BOLT-1", 4)
        self.assertEqual(inventory.get("BOLT-1").quantity, 3)

    def test_iteration_is_sorted_by_sku(self):
        skus = [item.sku for item in sample_inventory()]
        self.assertEqual(skus, ["BOLT-1", "GAD-1", "NUT-1", "WID-1"])

    def test_total_value(self):
        self.assertAlmostEqual(sample_inventory().total_value(), 109.3)


if __name__ == "__main__":
    unittest.main()
