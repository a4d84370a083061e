"""The exceptions that the CLI turns into a message and an exit status instead of a traceback."""


class UserError(Exception):
    """Bad input from the user: the message names the problem and the fix, in one line (exit status 2)."""


class Stopped(Exception):
    """A run that stopped early on a signal after saving what it needs to continue.

    The CLI prints the message (unless `quiet`: the other ranks of a torchrun job) and exits with
    128 + the signal's number, the status a process killed by that signal shows to shells, SLURM and
    Kubernetes: 143 for SIGTERM (preemption, a time limit, a requeue), 130 for SIGINT (Ctrl-C).
    """

    def __init__(self, signum: int, message: str, quiet: bool = False) -> None:
        super().__init__(message)
        self.signum, self.quiet = signum, quiet

    def __reduce__(self):
        """Pickled whole (a worker process of `unimask arena --jobs` sends it to the parent)."""
        return type(self), (self.signum, str(self), self.quiet)

    @property
    def exit_status(self) -> int:
        return 128 + self.signum
