"""The one exception type for problems a user can cause or fix (and its one refinement)."""


class TLIError(Exception):
    """A problem with the user's input or environment, with a message that says what to do.

    The UI shows it with ``st.error``; the CLI prints it on one line and exits non-zero.
    Anything else that escapes is a bug in TLI Studio.
    """


class OverlapError(TLIError):
    """Trained and control sets share a pair. The message names the control that accepts it:
    the CLI flag by default, the dashboard's checkbox through :meth:`with_control`."""

    def __init__(self, detail: str, control: str = "the --allow-overlap flag"):
        self.detail = detail
        super().__init__(f"trained and control sets overlap ({detail}); the control set must be unseen. Remove the "
                         f"overlap, or accept it explicitly with {control}")

    def with_control(self, control: str) -> "OverlapError":
        return OverlapError(self.detail, control)
