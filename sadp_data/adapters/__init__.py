"""Thin integrations with other libraries, imported as ``sadp_data.adapters.<name>``.

Each adapter imports its library lazily and only when used, so the core needs none of them.
"""
