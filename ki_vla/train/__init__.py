"""Trainer, training configs and distributed launch (torchrun: DDP / FSDP2)."""
