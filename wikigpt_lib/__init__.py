"""wikigpt_lib: the finished code of the Wiki-GPT course, as a small reusable library."""

from wikigpt_lib.device import is_quick, pick_device, pick_precision, quick, seed_everything

__all__ = ["is_quick", "pick_device", "pick_precision", "quick", "seed_everything"]
__version__ = "0.1.0"
