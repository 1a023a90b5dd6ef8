"""personalign: few-shot personalization of LLMs (Fermi and FSPO) on one shared runtime."""

__version__ = "0.1.0"
