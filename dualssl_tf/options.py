"""The building blocks of the run configuration: option sections and their fields.

Every setting of a run is a field of a small dataclass, a :class:`Section`, owned by the
module that uses it (the trainer's sections in :mod:`dualssl_tf.config`, a method's in
:mod:`dualssl_tf.methods.options`, a task's in its ``dualssl_tf.tasks.<name>`` package).
A field is declared with :func:`option`, which carries its command-line help and whether a
resumed run may change it; ``tools/train.py`` generates one absl flag per field from that.
The flag name is the section's ``prefix`` + the field name (``HLTMOptions.depth`` is
``--hltm_depth``), so flag names never change when code moves.

TensorFlow-free: bad flags are rejected in a fraction of a second, before TensorFlow loads.
"""

import dataclasses
import math
from typing import ClassVar


class ConfigError(ValueError):
    """A bad setting; ``flag`` names it, the message says what is allowed."""

    def __init__(self, flag, message):
        super().__init__(f"--{flag}: {message}")
        self.flag = flag


def require(cond, flag, message):
    """Raises ``ConfigError(flag, message)`` unless ``cond``."""
    if not cond:
        raise ConfigError(flag, message)


def choice(value, allowed, flag):
    """Raises ConfigError naming ``flag`` unless ``value`` is one of ``allowed``."""
    require(value in allowed, flag, f"got {value!r}; allowed: {', '.join(allowed)}")


def option(default, help, resumable=False):
    """A section field: its default, its ``--help`` text and whether it may change on resume.

    ``resumable=True`` marks settings that change how a run executes (devices, monitoring,
    fault handling) or how long it goes on, not what is trained: a run continued in an
    existing ``--model_dir`` may pass another value. Every other flag must equal the value
    recorded in ``model_dir/flags.txt`` (:func:`dualssl_tf.config.check_resume_compatible`).
    """
    return dataclasses.field(default=default, metadata={"help": help, "resumable": resumable})


@dataclasses.dataclass
class Section:
    """Base of the option sections: a dataclass of :func:`option` fields.

    Subclasses set ``prefix`` (prepended to field names to form flag names) and may
    override :meth:`validate`, which sees the whole config (cross-section checks such as
    "this task has no explicit negatives" live with the section that knows the rule).
    """
    prefix: ClassVar[str] = ""

    @classmethod
    def flag_fields(cls):
        """[(flag name, dataclasses.Field)] in declaration order."""
        return [(cls.prefix + f.name, f) for f in dataclasses.fields(cls)]

    def validate(self, cfg):
        """Raises ConfigError for a bad setting of this section (cfg: the TrainConfig)."""


def check_types(section):
    """Every field has its default's type, floats are finite and ints fit in int32."""
    for flag, field in section.flag_fields():
        value, kind = getattr(section, field.name), type(field.default)
        if kind in (bool, str):
            ok = isinstance(value, kind)
        else:  # an int is a fine float; a bool is neither
            ok = isinstance(value, (int, kind)) and not isinstance(value, bool)
        require(ok, flag, f"must be a {kind.__name__}, got {value!r}")
        if kind is float:
            require(math.isfinite(value), flag, f"must be a finite number, got {value}")
        if kind is int:
            require(abs(value) < 2 ** 31, flag, f"must be below 2**31, got {value}")
