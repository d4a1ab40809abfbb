"""Data: the bundled datasets' readers (bundled_rows); loading, inspection and cleaning arrive here next."""
