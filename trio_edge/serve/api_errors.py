"""ApiError: an HTTP error answered in OpenAI's shape, `{"error": {"message", "type", "param", "code"}}`.

`code` names the kind of error (it also labels `trio_serve_errors_total`); `type` follows from the status
as OpenAI's API does it. Every refusal of the server goes through here, so clients see one format.
"""

from __future__ import annotations

ERROR_TYPES = {401: "invalid_request_error", 429: "rate_limit_error"}  # 4xx otherwise invalid_request_error


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, *, param: str | None = None,
                 headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.param = status, code, message, param
        self.headers = headers or {}

    @property
    def type(self) -> str:
        if self.status >= 500:
            return "server_error"
        return ERROR_TYPES.get(self.status, "invalid_request_error")

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad_request(code: str, message: str, param: str | None = None) -> ApiError:
    return ApiError(400, code, message, param=param)
