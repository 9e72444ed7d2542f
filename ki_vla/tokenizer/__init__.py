"""FAST action tokenizer: DCT along time + byte-level BPE (METHOD.md)."""
