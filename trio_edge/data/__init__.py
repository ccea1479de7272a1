"""Data: the synthetic visual QA task and the image+question+answer records format (jsonl folder)."""

from .synthetic_vqa import make_sample, make_split, read_records, write_records

__all__ = ["make_sample", "make_split", "read_records", "write_records"]
