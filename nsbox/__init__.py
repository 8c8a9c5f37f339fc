"""nsbox: Linux containers you can read, trust and measure."""

__version__ = "0.1.0"
