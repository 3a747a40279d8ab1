"""Adapters that turn model libraries' networks into srrl_core denoisers."""
