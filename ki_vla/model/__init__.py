"""Backbone adapters over transformers, the action expert, KI attention and the policy variants."""
