"""Pretraining objectives, one file each, and the losses of fine-tuning (`supervised`).

Importing the package imports every module in it, so that each built-in objective registers itself
with `registry.register` (its ``@register`` decorator): adding an objective is one new file here
and one config, with no list to edit. `registry` imports none of them.
"""

import importlib
import pkgutil

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
