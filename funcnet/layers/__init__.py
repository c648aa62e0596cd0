"""The layer catalogue: one family per module, every layer a factory returning a Model."""

from .activation import elu as elu
from .activation import gelu as gelu
from .activation import leaky_relu as leaky_relu
from .activation import log_softmax as log_softmax
from .activation import relu as relu
from .activation import sigmoid as sigmoid
from .activation import silu as silu
from .activation import softmax as softmax
from .activation import softplus as softplus
from .activation import tanh as tanh
from .control import cond as cond
from .control import switch as switch
from .dense import dense as dense
from .dropout import dropout as dropout
from .embed import embed as embed
from .reshape import flatten as flatten
from .reshape import reshape as reshape
