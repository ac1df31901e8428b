"""File-format readers shared by use cases, and the embedded default datasets."""
