"""Batch labeling of CSV/XLSX/JSONL files with the service's engine (`lsllm`, `python -m ml_backend`)."""
