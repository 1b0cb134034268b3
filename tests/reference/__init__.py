"""Helpers that load the PyTorch reference implementations for parity tests."""
