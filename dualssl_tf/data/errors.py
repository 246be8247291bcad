"""The data layer's one error: bad data or a bad argument, named by the argument.

The data layer knows no flags: a :class:`DataError` names the parameter of the function
that raised it (``path``, ``batch_size``, ...), and the layer that knows the options
(``dualssl_tf.tasks.images.task``) maps it to the flag that supplied the value. Its
message is the user's: what is wrong and what to do (the hint may name the flag to change,
as the tools print it). TensorFlow-free.
"""


class DataError(ValueError):
    """``argument``: the parameter concerned; ``message``: what is wrong, what to do.
    ``str()`` is ``"argument: message"``."""

    def __init__(self, argument, message):
        super().__init__(f"{argument}: {message}")
        self.argument = argument
        self.message = message
