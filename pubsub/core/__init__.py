"""Pure leaves: the ring, the stream entries, the Phoenix frames, rates, task stopping. They import
nothing else of DPS (tests/test_layout.py checks), so every other part may use them."""
