"""
The HTTPS API: the connection (``channel``), the resource tree and its
routes, and the audit line every request leaves.
"""
