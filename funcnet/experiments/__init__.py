"""Runnable experiments: ``python -m funcnet.experiments.<name>``.

- ``mlp``: the two-layer ReLU network of the "deep learning software" lecture, in a plain jitted loop.
- ``regression``: iris-style regression (three measurements predict the fourth).
"""
