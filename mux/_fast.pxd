# C-level declarations of the scanner core.
