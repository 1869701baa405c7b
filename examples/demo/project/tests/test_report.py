import unittest

from inventory.report import stock_report
from inventory.sample import sample_inventory


class StockReportTest(unittest.TestCase):
    def test_one_line_per_item_plus_total(self):
        lines = stock_report(sample_inventory()).splitlines()
        self.assertEqual(len(lines), 5)
        self.assertTrue(lines[0].startswith("BOLT-1"))
        self.assertTrue(lines[-1].startswith("TOTAL "))

    def test_lines_show_name_and_quantity(self):
        report = stock_report(sample_inventory())
        self.assertIn("Widget", report)
        self.assertRegex(report, r"GAD-1\s+Gadget\s+7 x ")


if __name__ == "__main__":
    unittest.main()
