"""Named outputs tapped from inside a functional encoder (its layers' outputs, or tensors
built on them), for an export's extra outputs and a method's (e.g. BYOL's prediction)."""

import re

# The export's own outputs; a tap may not take these names.
RESERVED_OUTPUTS = ("representation", "projection")


def output_key(name):
    """A signature output key for ``name``: SavedModel keys must be identifiers, layer names
    may hold '/' or '-'. ValueError for a reserved name."""
    key = re.sub(r"[^0-9A-Za-z_]", "_", str(name))
    if key in RESERVED_OUTPUTS:
        raise ValueError(f"intermediate_layers: output name {name!r} is reserved; rename it")
    return key


def tap_outputs(encoder, taps):
    """``{output name: symbolic tensor}`` of a functional encoder's taps ``{output name:
    layer name, or a callable encoder -> symbolic tensor}`` (e.g. the ViT's mean of patch
    tokens, :func:`dualssl_tf.models.vit.patch_mean`); ValueError naming the encoder's
    layers for a name it does not have."""
    outputs = {}
    for key, layer_name in taps.items():
        if callable(layer_name):
            outputs[output_key(key)] = layer_name(encoder)
            continue
        try:
            layer = encoder.get_layer(layer_name)
        except ValueError:
            names = ", ".join(l.name for l in encoder.layers)
            raise ValueError(f"intermediate_layers: encoder {encoder.name!r} has no layer "
                             f"{layer_name!r}; its layers are: {names}") from None
        outputs[output_key(key)] = layer.output
    return outputs
