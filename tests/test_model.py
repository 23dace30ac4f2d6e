"""Random keys and tokens: the right alphabet and length, and no character
favoured (each of 36 token characters within a generous band)."""
from __future__ import annotations

import re
from collections import Counter

from twisted.trial import unittest

from mailgw.model import generate_key, generate_token


class RandomTextTests(unittest.TestCase):
    def test_shapes(self):
        self.assertRegex(generate_key(), r"^[A-Za-z0-9]{24}$")
        self.assertRegex(generate_token(), r"^[A-Z0-9]{8}$")
        self.assertRegex(generate_token(12), r"^[A-Z0-9]{12}$")
        self.assertEqual(len({generate_key() for _ in range(1000)}), 1000)

    def test_uniform(self):
        counts = Counter("".join(generate_token(100) for _ in range(720)))
        self.assertEqual(len(counts), 36)
        for char, count in counts.items():  # 2000 expected each
            self.assertTrue(1700 < count < 2300, (char, count))
        self.assertTrue(all(re.match(r"[A-Z0-9]", c) for c in counts))
