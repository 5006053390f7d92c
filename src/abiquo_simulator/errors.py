"""The one error the simulated API raises: an HTTP status with Abiquo's error code and message."""

from __future__ import annotations


class AbiquoApiError(Exception):
    """Rendered as Abiquo's error list (`{"collection": [{"code", "message"}]}` or `<errors>`)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status = status
        self.code = code
        self.message = message


def unauthorized() -> AbiquoApiError:
    return AbiquoApiError(401, "401-UNAUTHORIZED", "This request requires user authentication")


def forbidden() -> AbiquoApiError:
    return AbiquoApiError(403, "GEN-4", "Not enough permissions to perform this action")


def not_found(
    code: str = "404-NOT FOUND", message: str = "The requested resource does not exist"
) -> AbiquoApiError:
    return AbiquoApiError(404, code, message)


def bad_request(message: str) -> AbiquoApiError:
    return AbiquoApiError(400, "400-BAD REQUEST", message)
