"""One state per window and task, for displays that show a single value per window
(Grafana's state timeline, the LSL affect stream). Pure."""

from __future__ import annotations


def window_state(label: str | None, status: str, off_wrist: bool | None) -> str:
    """The label when the window has one, else why not (``low_quality``, ``off_wrist``,
    ``calibrating``, ``uncertain``): a window without a label must never look like the
    label before it, which is what a state timeline draws when a row is simply missing."""
    if label is not None and status == "ok":
        return label
    if status == "low_quality" and off_wrist is True:
        return "off_wrist"
    return status if status != "ok" else "no_label"
