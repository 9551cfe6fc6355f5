"""Models: loading by alias, hub id or directory (loading.py), the aliases, SmolLM2 fetched from the
package index, checks before any weights load (preflight.py), and the embedded toy model (toy/).

`load_model` and `LoadedModel` are importable from here, loaded on first use so that importing
this package stays light."""

_EXPORTS = ("load_model", "LoadedModel")


def __getattr__(name):
    if name in _EXPORTS:
        from . import loading

        return getattr(loading, name)
    raise AttributeError(f"module 'nnsight_persona.models' has no attribute {name!r}")
