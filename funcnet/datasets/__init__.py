"""Small data sets generated in code, so examples and tests need no download.

- ``iris_like``: iris-style measurements (three predict the fourth).
- ``sentiment_language``: a compositional sentiment language of labelled parse trees.
"""

from .iris import Split as Split
from .iris import iris_like as iris_like
from .sentiment import sentiment_language as sentiment_language
