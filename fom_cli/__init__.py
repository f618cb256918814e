"""fom: bring a still image to life with the First Order Motion Model.

From Python (see fom_cli/api.py):

    import fom_cli as fom
    model = fom.load_model("vox")
    fom.animate(model, "face.png", "talk.mp4", "out.mp4", face=True)
"""

__version__ = "0.1.0"

# The API is imported on first use, so that `fom --help` and `fom --version` start without torch.
_API = ("load_model", "animate", "Model", "AnimationOptions")


def __getattr__(name):
    if name in _API:
        from fom_cli import api

        return getattr(api, name)
    raise AttributeError(f"module 'fom_cli' has no attribute {name!r}")


def __dir__():
    return sorted(list(globals()) + list(_API))
