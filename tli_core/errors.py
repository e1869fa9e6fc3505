"""The one exception type for problems a user can cause or fix."""


class TLIError(Exception):
    """A problem with the user's input or environment, with a message that says what to do.

    The UI shows it with ``st.error``; the CLI prints it on one line and exits non-zero.
    Anything else that escapes is a bug in TLI Studio.
    """
