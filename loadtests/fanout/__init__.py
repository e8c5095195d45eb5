"""`python -m loadtests.fanout`: change-event fan-out, Duckcast against Socket.IO (see cli.py
and loadtests/README.md)."""
