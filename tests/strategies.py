"""Hypothesis settings and strategies the property tests share."""

from hypothesis import settings
from hypothesis import strategies as st

EXAMPLES = settings(max_examples=200, deadline=None)

token_ids = st.lists(st.integers(0, 151_000), max_size=40)
