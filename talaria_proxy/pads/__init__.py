"""Pad products for the `pad` scheme: sources (dealer, he) and the pool that hands them out once."""
