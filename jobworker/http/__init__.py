"""
The HTTPS API: the site and its resource tree (``site``), the routes
(``job_routes``, ``output_routes``, ``meta_routes``) on one ``endpoint``
base, the connection (``channel``), and the audit line every request leaves.
What the routes need of the job library is ``library.JobService``.
"""
