"""SadTalker Audio2Coeff networks (`networks`, needs torch) and their graph specs (`spec`, torch-free)."""
