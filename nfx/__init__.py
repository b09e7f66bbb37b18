"""nfx: fine-tune normalizer-free networks on small medical imaging datasets.

Only the version lives here: importing nfx must stay cheap (`nfx --help` < 1 s).
"""

__version__ = "0.1.0"
