"""``mergebuild ui``: a local page to see, edit and build a recipe (docs/ui.md).

A client of the library: planning, explaining and building are the CLI's own functions; this
package only serves them to a browser (Starlette + uvicorn, the ``ui`` extra).
"""

from mergefile.ui.session import RecipeSession

__all__ = ["RecipeSession", "UiServer"]


def __getattr__(name: str):
    if name == "UiServer":  # imports starlette/uvicorn: only when a server is made
        from mergefile.ui.server import UiServer

        return UiServer
    raise AttributeError(name)
