"""The ledger domain: value objects, the store interface and its implementations.

Nothing in this package imports Flask.
"""
