"""The medsynth command line (thin: each command parses options and calls one library function)."""
