"""Open documents written to disk before the server moves to a new pod.

With live co-editing (jupyter-collaboration) the server holds each open document, with
every collaborator's edits, and writes it to disk a second after the last change. A move
ends the server at once (``move.EndAtOnce``), so the hub's checkpoint writes every open
document first: what the next server loads from the home is what was on the screens,
including a guest's edits the owner's page never saved. The page need not save them
itself: a save from the page checks the file on disk first, and asks with a dialog when
the server has just written it (that dialog held up Return GPU until someone answered).

The rooms are jupyter-collaboration's own (``jupyter_server_ydoc.rooms.DocumentRoom``),
saved as its manual save does, without the debounce; the version is pinned in
``pyproject.toml``, and ``tests/e2e/test_lab_browser_k8s.py`` checks that an output
made just before a move (timed writes off) is in the moved server's file.
"""

from __future__ import annotations

import asyncio

SAVE_TIMEOUT = 30.0
"""Seconds to wait for one document to be written."""


def _rooms(serverapp) -> list:
    try:
        from jupyter_server_ydoc.rooms import DocumentRoom
    except ImportError:  # co-editing not installed: the pages save their own documents
        return []
    rooms = []
    for app in serverapp.extension_manager.extension_apps.get("jupyter_server_ydoc", ()):
        server = getattr(app, "ywebsocket_server", None)
        for room in list(getattr(server, "rooms", {}).values()):
            if isinstance(room, DocumentRoom) and room.ready:
                rooms.append(room)
    return rooms


async def save_open_documents(serverapp) -> dict:
    """Write every open collaborative document now; what was written and what was not."""
    saved, failed = [], []
    for room in _rooms(serverapp):
        path = getattr(room._file, "path", room.room_id)
        try:
            # a save under way is cancelled and done again with the latest content
            await asyncio.wait_for(
                room._maybe_save_document(room._saving_document, save_now=True), SAVE_TIMEOUT
            )
        except Exception as e:  # noqa: BLE001 -- reported; the move goes on
            serverapp.log.warning("gpulab: could not save %s before the move: %r", path, e)
            failed.append(path)
        else:
            saved.append(path)
    return {"documents_saved": saved, "documents_not_saved": failed}
