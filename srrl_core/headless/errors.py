"""The headless client's errors, each carrying the exit code the command line returns for it."""

from __future__ import annotations

EXIT_OK, EXIT_WORKFLOW, EXIT_USAGE, EXIT_CONNECTION, EXIT_TIMEOUT = 0, 1, 2, 3, 4


class HeadlessError(Exception):
    exit_code = EXIT_WORKFLOW


class UsageError(HeadlessError, ValueError):
    """Bad workflow file or override."""
    exit_code = EXIT_USAGE


class OverrideError(UsageError):
    pass


class ServerError(HeadlessError):
    """The server could not be reached or gave an answer we cannot use."""
    exit_code = EXIT_CONNECTION


class WorkflowError(HeadlessError):
    """The server refused the workflow (HTTP 400, node_errors)."""

    def __init__(self, message, response=None):
        super().__init__(message)
        self.response = response


class ExecutionError(HeadlessError):
    """The workflow was queued but its execution failed or was interrupted."""

    def __init__(self, message, details=None):
        super().__init__(message)
        self.details = details or {}


class TimeoutExpired(HeadlessError):
    exit_code = EXIT_TIMEOUT
