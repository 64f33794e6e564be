"""bnnrepro: re-run the 2016 binary/quantized network papers' tables, and run binary nets packed."""
__version__ = "0.1.0"
