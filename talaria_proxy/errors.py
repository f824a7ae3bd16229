"""Exceptions of the proxy engine.

    TalariaError
    ├── CloudError              the cloud backend failed us (maps to 502/503 for API clients)
    │   ├── CloudUnavailable    unreachable, timed out, or restarted with other weights/bases
    │   └── CloudRejected       the cloud answered 4xx: a protocol bug on our side
    └── EngineOverloaded        the bounded wait queue is full (429)
"""


class TalariaError(Exception):
    pass


class CloudError(TalariaError):
    pass


class CloudUnavailable(CloudError):
    pass


class CloudRejected(CloudError):
    pass


class EngineOverloaded(TalariaError):
    pass
